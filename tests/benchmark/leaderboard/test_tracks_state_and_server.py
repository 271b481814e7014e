"""v2 tracks beyond one honest server at initialization: the model's training state and the malicious server.

Covers the track schema's ``model.state`` (reaches the trials, keeps the old tracks' hashes, never reaches the
FedSGD utility run), ``estimate: null``, the imprint track's trial, and the leakage score of an exact copy.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import replace

import pytest
import torch
import yaml
from dglbench.errors import ConfigError
from dglbench.leaderboard.aggregate import suite_worst_case
from dglbench.leaderboard.protocol import leakage_value, succeeded
from dglbench.leaderboard.track import Track, default_root, load_track
from dglbench.leaderboard.validate import validate_paths
from dglbench.record import AttackOutcome, VictimRecord

ROOT = default_root()
TRACKS = ROOT / "v2" / "tracks"

#: Content hashes of the tracks as stored before tracks had a ``model.state`` key (commit eac1633): the entries of
#: these tracks carry them, so they must not change.
HASHES_BEFORE_STATE = {
    "cifar10-cifar_resnet18@1": "90325adc58898aef",
    "cifar10-cifar_resnet18@2": "a19a18c9dcf5deea",
    "digits-convnet5@1": "ee92c85196401cc9",
    "faces-convnet5@2": "3d3c60273e3d73b7",
    "imagenet-resnet50@1": "01c00dd1d8822e26",
    "imagenet-resnet50@2": "2b2aafe91d1587fd",
    "mnist-convnet5@1": "cebd46520c7809f7",
    "mnist-convnet5@2": "7f8a192fe57ec115",
    "natural-convnet5@2": "6ca8c0a5097e48e6",
}


def _raw(name: str) -> dict:
    return yaml.safe_load((TRACKS / f"{name}.yaml").read_text())


def test_tracks_without_a_state_keep_their_content_hash():
    for ref, digest in HASHES_BEFORE_STATE.items():
        assert load_track(ref, ROOT).content_hash == digest, ref
    # the v1 entries stored their track's hash when they were submitted
    for path in sorted((ROOT / "v1" / "entries").glob("*/*.json")):
        if not path.name.endswith(".victims.json"):
            stored = json.loads(path.read_text())["provenance"]["track_hash"]
            assert stored == load_track(f"{path.parent.name}@1", ROOT).content_hash, path
    data = _raw("natural-convnet5")
    explicit = copy.deepcopy(data)
    explicit["model"]["state"] = "init"
    assert Track.from_dict(explicit).content_hash == HASHES_BEFORE_STATE["natural-convnet5@2"]
    trained = copy.deepcopy(data)
    trained["model"]["state"] = {"trained_steps": 5}
    assert Track.from_dict(trained).content_hash != HASHES_BEFORE_STATE["natural-convnet5@2"]


def test_the_trained_state_reaches_the_trial_and_only_it_differs_from_the_init_track():
    init, trained = load_track("natural-convnet5@2", ROOT), load_track("natural-convnet5-trained@2", ROOT)
    a, b = init.trial_configs("none", {})[0], trained.trial_configs("none", {})[0]
    assert b.model_state == {"trained_steps": 1000, "lr": 0.01, "batch_size": 32, "seed": 0}
    assert a.model_state == "init" and "model_state" not in a.to_dict()
    assert a.trial_id != b.trial_id
    differing = {k for k in set(a.to_dict()) | set(b.to_dict()) if a.to_dict().get(k) != b.to_dict().get(k)}
    assert differing == {"model_state"}
    # the track copies natural-convnet5@2's protocol: only the id and the model's state differ
    x, y = _raw("natural-convnet5"), _raw("natural-convnet5-trained")
    for d in (x, y):
        for key in ("id", "title", "description", "references"):
            d.pop(key)
        d["model"].pop("state", None)
    assert x == y


def test_a_bad_state_is_one_config_error_naming_the_track():
    data = _raw("natural-convnet5")
    data["model"]["state"] = "trained"
    with pytest.raises(ConfigError, match=r"track.*model_state must be 'init' or a mapping"):
        Track.from_dict(data)


def _accuracy_of(model: torch.nn.Module, dataset) -> float:
    """Test accuracy (percent) of ``model``, computed here by hand."""
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(-1) == y).double().mean())


def test_fedsgd_utility_starts_from_the_initialization_not_the_trained_state(tmp_path, monkeypatch):
    from dglbench.datamodules import create_datamodule
    from dglbench.leaderboard.utility import fedsgd_accuracy
    from dglbench.modules import build_victim_model, initialized_model

    monkeypatch.setenv("DGLBENCH_CACHE", str(tmp_path))  # the trained state is cached here, not in ~/.cache
    data = _raw("natural-convnet5")
    data["data"]["params"]["num_victims"] = 2
    data["model"]["state"] = {"trained_steps": 100, "lr": 0.1}  # a short recipe that moves the accuracy far
    track = Track.from_dict(data)
    config = track.trial_configs("none", {})[0]
    dm = create_datamodule(config.dataset, **config.dataset_params)
    at_init = _accuracy_of(initialized_model(config, dm.num_classes, dm.image_shape), dm.test_dataset())
    trained = _accuracy_of(build_victim_model(config, dm.num_classes, dm.image_shape), dm.test_dataset())
    assert abs(trained - at_init) > 10.0  # the trained state learnt the test split: the check below can fail
    outcome = fedsgd_accuracy(track, "none", {}, rounds=0)  # no round: the accuracy of the starting model
    assert outcome.test_accuracy == pytest.approx(at_init, abs=1e-3)


@pytest.mark.parametrize(("track_id", "scale"), [("natural-imprint", 1.0), ("natural-imprint-scaled", 1e-8)])
def test_the_malicious_tracks_run_imprint_under_the_malicious_case_without_i2f(track_id, scale):
    from dglbench.defenses import create_defense
    from dglbench.modules import attack_suite

    track = load_track(f"{track_id}@2", ROOT)
    (config,) = track.trial_configs("gaussian", {"sigma": 0.01})
    case = config.case_obj
    assert (case.server, case.imprint_bins, case.update, case.imprint_scale) == ("malicious", 256, "fedsgd", scale)
    assert [a["name"] for a in config.attacks] == ["imprint"] and config.adaptive
    assert config.estimate is False and track.estimate is None
    b = track.data.params["images_per_victim"]
    assert b == track.utility.batch_size == 32 and track.num_victims * b <= 1168  # disjoint train victims
    suite = attack_suite(config, create_defense("gaussian", sigma=0.01))
    adaptive = [s for s in suite if s.adaptive]
    assert adaptive and all(s.skip and "inverting_gradients" in s.skip for s in adaptive)
    assert [s.key for s in suite if not s.skip] == ["imprint"]


def test_estimate_null_is_for_protocol_2_only():
    data = _raw("natural-convnet5")
    data["estimate"] = None
    assert Track.from_dict(data).trial_configs("none", {})[0].estimate is False
    v1 = yaml.safe_load((ROOT / "v1" / "tracks" / "digits-convnet5.yaml").read_text())
    v1["estimate"] = None
    with pytest.raises(ConfigError, match="protocol-1 tracks estimate I2F"):
        Track.from_dict(v1)


def _outcome(key: str, psnr: float | None, mse: float | None, ssim: float) -> AttackOutcome:
    metrics = {"psnr": psnr, "mse": mse, "ssim": ssim, "l2_error": 1.0,
               "floors": {"mean_image": {"psnr": 10.0, "ssim": 0.2}}}  # fmt: skip
    return AttackOutcome(key, status="ok", final_loss=0.0, metrics=metrics)


def test_an_exact_copy_stored_as_null_psnr_is_full_leakage_and_a_diverged_attack_fails():
    # records store PSNR +inf (an exact copy of one image of the batch) as null; its MSE is finite
    exact, diverged = _outcome("imprint", None, 0.13, 0.78), _outcome("imprint", None, None, 0.5)
    assert leakage_value(exact.metrics, "psnr") == math.inf and leakage_value(exact.metrics, "ssim") == 0.78
    assert succeeded(exact, ["psnr", "ssim"]) and not succeeded(diverged, ["psnr", "ssim"])
    track = load_track("natural-imprint@2", ROOT)
    track = replace(track, data=replace(track.data, params={**track.data.params, "num_victims": 3}))
    records = [
        VictimRecord("t", 0, attacks=(exact,)),
        VictimRecord("t", 1, attacks=(_outcome("imprint", 30.0, 0.001, 0.6),)),  # by hand: 1 - 10^-2 = 0.99
        VictimRecord("t", 2, attacks=(diverged,)),
    ]
    w = suite_worst_case(track, records)
    assert (w.victims, w.failures) == (3, 1)
    assert w.leakage.n == 2 and w.leakage.mean == pytest.approx((1.0 + 0.99) / 2)


def test_an_attack_skipped_on_every_victim_is_neither_a_failure_nor_in_the_entry():
    """ig_l2 does not apply on the imprint track (its base attack is not in the suite): skipped, not failed."""
    from dglbench.leaderboard.aggregate import suite_summaries

    track = load_track("natural-imprint@2", ROOT)
    track = replace(track, data=replace(track.data, params={**track.data.params, "num_victims": 2}))
    skipped = AttackOutcome("ig_l2", status="skipped", reason="does not apply", adaptive=True)
    records = [
        VictimRecord("t", 0, attacks=(_outcome("imprint", 30.0, 0.001, 0.6), skipped)),
        VictimRecord("t", 1, attacks=(_outcome("imprint", None, None, 0.5), skipped)),  # diverged: a failure
    ]
    w = suite_worst_case(track, records)
    assert w.attack_failures == {"imprint": 1}
    assert [(s.attack, s.failures) for s in suite_summaries(track, "t", records)] == [("imprint", 1)]
    # skipped on one victim only: listed, and counted as a failure on none
    partly = [
        records[0],
        VictimRecord("t", 1, attacks=(_outcome("imprint", 20.0, 0.01, 0.5), _outcome("ig_l2", 12.0, 0.06, 0.3))),
    ]
    assert suite_worst_case(track, partly).attack_failures == {"imprint": 0, "ig_l2": 0}
    assert [(s.attack, s.failures) for s in suite_summaries(track, "t", partly)] == [("imprint", 0), ("ig_l2", 0)]


def test_validate_passes_on_the_new_tracks_and_their_entries(tmp_path):
    root = tmp_path / "leaderboards"
    (root / "v2" / "tracks").mkdir(parents=True)
    shutil.copytree(ROOT / "v2" / "schema", root / "v2" / "schema")
    names = ("natural-convnet5-trained", "natural-imprint", "natural-imprint-scaled")
    for name in names:
        shutil.copy(TRACKS / f"{name}.yaml", root / "v2" / "tracks")
    assert validate_paths([], root) == []
    for name in names:
        entries = ROOT / "v2" / "entries" / name
        if entries.is_dir():
            assert validate_paths([entries], ROOT) == []


def test_the_strip_shows_the_reconstruction_paired_with_a_batch_victims_first_image(tmp_path):
    import numpy as np
    from dglbench.layout import RunLayout, save_reconstructions
    from dglbench.leaderboard.strip import SCALE, strip_image

    folder = RunLayout(tmp_path / "run").images("t")
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    returned = x[[2, 0, 1]]  # an attack's own order: the copy of image 0 comes second
    save_reconstructions(folder.victim(0), x, {"imprint": returned}, worst="imprint")
    pixels = strip_image(folder.directory, 1)
    want = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    want = want.repeat(SCALE, 0).repeat(SCALE, 1)
    assert np.array_equal(pixels[: 4 * SCALE], want) and np.array_equal(pixels[6 * SCALE :], want)


def test_a_victim_without_reconstruction_is_crossed_out_not_black(tmp_path):
    """Every attack failed: no ``worst`` saved. The cell is grey with red diagonals, never a black 'image'."""
    import numpy as np
    from dglbench.layout import RunLayout, save_reconstructions
    from dglbench.leaderboard.strip import SCALE, strip_image

    folder = RunLayout(tmp_path / "run").images("t")
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    save_reconstructions(folder.victim(0), x, {}, worst=None)
    cell = strip_image(folder.directory, 1)[6 * SCALE :: SCALE, ::SCALE]  # the bottom 4×4 cell, one pixel each
    red = np.all(cell == (200, 0, 0), axis=-1)
    assert red[np.arange(4), np.arange(4)].all() and red[np.arange(4), 3 - np.arange(4)].all()
    assert np.all(cell[~red] == 220)
