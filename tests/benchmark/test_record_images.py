"""Saved reconstructions (layout.save_reconstructions / load_reconstructions) and per-victim timings in the record."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dglbench.datamodules import create_datamodule
from dglbench.errors import DglbenchError
from dglbench.layout import RunLayout, load_reconstructions, save_reconstructions
from dglbench.runner import run_trial
from dglbench.trial import TrialConfig

VICTIMS = 2
DATA = {"num_victims": VICTIMS, "image_size": 8}
SUITE = [
    {"name": "inverting_gradients", "params": {"max_iterations": 30, "cosine_scope": "layer"}},
    {"name": "dlg", "params": {"max_iterations": 5}},
]


def test_round_trip_equals_the_uint8_quantization(tmp_path):
    gen = torch.Generator().manual_seed(0)
    original = torch.rand(2, 3, 5, 5, generator=gen)
    recon = torch.rand(2, 3, 5, 5, generator=gen) * 1.4 - 0.2  # outside [0, 1]: clamped
    path = save_reconstructions(
        tmp_path / "v.npz", original, {"a#2": recon, "b": original}, worst="a#2", indices=[7, 9]
    )
    out = load_reconstructions(path)
    assert set(out) == {"original", "a#2", "b", "worst", "indices"}
    # the truth written out by hand: clamp, x 255, round half to even (numpy / torch), / 255
    expect = np.round(np.clip(recon.numpy().astype(np.float64), 0, 1) * 255) / 255
    np.testing.assert_array_equal(out["a#2"].double().numpy(), expect.astype(np.float32).astype(np.float64))
    assert torch.equal(out["worst"], out["a#2"]) and out["worst"].shape == (2, 3, 5, 5)
    assert float((out["original"] - original).abs().max()) <= 0.5 / 255 + 1e-7
    assert out["indices"].tolist() == [7, 9]
    assert path.stat().st_size < original.numel() * 3 + 2000  # uint8, compressed: about a byte per value


def test_loading_a_missing_or_foreign_file_is_one_clear_error(tmp_path):
    with pytest.raises(DglbenchError, match="cannot read reconstructions"):
        load_reconstructions(tmp_path, 3)
    bad = tmp_path / "victim-000001.npz"
    np.savez(bad, something=np.zeros(2))
    with pytest.raises(DglbenchError, match="cannot read reconstructions"):
        load_reconstructions(tmp_path, 1)


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrialConfig.from_dict({
        "dataset_params": DATA, "lpips": False, "attacks": SUITE, "adaptive": False, "victims_per_step": VICTIMS,
        "defense": "gaussian", "defense_params": {"sigma": 0.01}, "eps": [0.1],
    })  # fmt: skip
    return out, cfg, run_trial(cfg, output_dir=out, progress=False)


def test_each_victim_saves_its_originals_and_each_attacks_reconstruction(trial):
    out, cfg, records = trial
    dm = create_datamodule("digits", victims_per_step=VICTIMS, **DATA)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    folder = RunLayout(out).images(cfg.trial_id).directory
    for rec in records:
        images = load_reconstructions(folder, rec.victim_id)
        assert set(images) == {"original", "inverting_gradients", "dlg", "worst", "indices"}
        truth = dm.denormalize(batch["images"][rec.victim_id].float()).clamp(0, 1)  # the private images
        assert float((images["original"] - truth).abs().max()) <= 0.5 / 255 + 1e-6
        assert images["indices"].tolist() == list(rec.indices)
        assert torch.equal(images["worst"], images[rec.worst.source["psnr"]])
        for key in ("inverting_gradients", "dlg"):  # PSNR by hand from the saved pixels ≈ the recorded PSNR
            mse = float(((images[key].double() - images["original"].double()) ** 2).mean())
            assert 10 * math.log10(1 / mse) == pytest.approx(rec.metric("psnr", key), abs=0.05)


def test_images_are_off_when_the_trial_says_so(tmp_path):
    cfg = TrialConfig.from_dict({
        "dataset_params": {"num_victims": 1, "image_size": 8}, "lpips": False, "save_images": False, "eps": [0.1],
        "attack_params": {"max_iterations": 2},
    })  # fmt: skip
    assert (
        cfg.to_dict()["save_images"] is False
        and "save_images" not in cfg.with_overrides({"save_images": None}).to_dict()
    )
    run_trial(cfg, output_dir=tmp_path, progress=False)
    assert not RunLayout(tmp_path).images(cfg.trial_id).directory.exists()


def test_timings_name_the_shared_steps_and_their_victim_counts(trial):
    _, _, records = trial
    for rec in records:
        t = rec.timings
        assert t.step_victims == VICTIMS and t.i2f_victims == VICTIMS
        assert t.i2f == pytest.approx(t.i2f_step / VICTIMS)
        assert set(t.attack_steps) == {"inverting_gradients", "dlg"}
        assert all(s["victims"] == VICTIMS and s["seconds"] > 0 for s in t.attack_steps.values())
        assert t.attack == pytest.approx(sum(s["seconds"] for s in t.attack_steps.values()) / VICTIMS)
        assert t.total >= t.i2f_step  # the step's wall time holds the whole shared estimate
    assert records[0].timings.attack_steps == records[1].timings.attack_steps  # one step: the same facts


def test_an_estimate_only_trial_saves_no_images(tmp_path):
    cfg = TrialConfig.from_dict({"dataset_params": {"num_victims": 1, "image_size": 8}, "attack": None, "eps": [0.1]})
    run_trial(cfg, output_dir=tmp_path, progress=False)
    assert not RunLayout(tmp_path).images(cfg.trial_id).directory.exists()
