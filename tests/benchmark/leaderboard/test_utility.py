"""FedSGD utility: equals plain SGD computed by hand, is deterministic, and the defense acts on every client."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from dglbench.leaderboard.track import load_track
from dglbench.leaderboard.utility import fedsgd_accuracy, undefended_accuracy


def _small(track, **utility):
    return dataclasses.replace(track, utility=dataclasses.replace(track.utility, **utility))


def test_fedsgd_matches_a_hand_written_sgd_loop():
    from dglbench.datamodules import create_datamodule
    from dglbench.modules import build_victim_model

    track = _small(load_track("digits-convnet5"), rounds=3, clients=2, batch_size=8, lr=0.5)
    got = fedsgd_accuracy(track, "none", {})
    # by hand: same model and batches, average of the two client gradients, SGD step
    config = track.trial_configs("none", {})[0]
    dm = create_datamodule("digits", **track.data.params)
    train, test = dm.train_dataset(), dm.test_dataset()
    model = build_victim_model(config, dm.num_classes, dm.image_shape)
    draw = torch.Generator().manual_seed(track.utility.seed)
    for _ in range(3):
        perm = torch.randperm(len(train), generator=draw)[:16]
        x = torch.stack([train[int(i)][0] for i in perm])
        y = torch.tensor([train[int(i)][1] for i in perm])
        grads = [torch.autograd.grad(torch.nn.functional.cross_entropy(model(x[c * 8 : (c + 1) * 8]),
                                                                       y[c * 8 : (c + 1) * 8]),
                                     list(model.parameters())) for c in range(2)]  # fmt: skip
        with torch.no_grad():
            for p, g0, g1 in zip(model.parameters(), *grads):
                p -= 0.5 * (g0 + g1) / 2
    xt = torch.stack([test[i][0] for i in range(len(test))])
    yt = torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        expected = 100.0 * float((model(xt).argmax(-1) == yt).float().mean())
    assert abs(got.test_accuracy - expected) < 1e-3 and got.test_images == len(test) == 359


def test_fedsgd_is_deterministic_and_the_defense_acts(capsys):
    track = _small(load_track("digits-convnet5"), rounds=4, clients=2, batch_size=16)
    a = fedsgd_accuracy(track, "gaussian", {"sigma": 0.5})
    assert capsys.readouterr().err == ""
    b = fedsgd_accuracy(track, "gaussian", {"sigma": 0.5}, log=True)  # logging changes nothing but stderr
    assert a.test_accuracy == b.test_accuracy
    assert f"utility of gaussian on {track.ref}: 4/4 FedSGD rounds" in capsys.readouterr().err
    # pruning every entry (ratio 1) shares zero gradients: the model stays at its initialization
    frozen = fedsgd_accuracy(track, "pruning", {"ratio": 1.0})
    untrained = fedsgd_accuracy(track, "none", {}, rounds=0)
    assert frozen.test_accuracy == untrained.test_accuracy


def test_undefended_accuracy_is_cached_per_track(tmp_path):
    track = _small(load_track("digits-convnet5"), rounds=2, clients=1, batch_size=4)
    first = undefended_accuracy(track, root=tmp_path)
    cache = tmp_path / "v1" / "utility" / "digits-convnet5.json"
    assert cache.exists()
    again = undefended_accuracy(track, root=tmp_path)
    assert again.test_accuracy == first.test_accuracy and again.seconds == 0.0  # read, not recomputed
    other = _small(track, seed=1)
    assert undefended_accuracy(other, root=tmp_path).seconds > 0.0  # another track content: recomputed


def test_fedsgd_runs_on_one_cpu_thread_whatever_the_callers_count(monkeypatch):
    """A selecting defense turns the last-bit differences between thread counts into other training runs (topk 0.1
    on natural-imprint@2: 58.4 % on one thread, 53.6 % on two), so the run pins one thread and restores the count."""
    import dglbench.defenses

    seen = []
    real = dglbench.defenses.apply_defense

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(dglbench.defenses, "apply_defense", spy)
    track = _small(load_track("digits-convnet5"), rounds=2, clients=2, batch_size=4)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fedsgd_accuracy(track, "topk", {"ratio": 0.1})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1] * 4


def _info(name: str, **params):
    from dglbench.leaderboard.submit import defense_info

    return defense_info(name, params)


def _capture_final_weights(monkeypatch) -> list:
    """A list that each FedSGD run appends its final weights to (taken when it measures accuracy)."""
    import dglbench.leaderboard.utility as utility

    finals: list = []
    real = utility._accuracy

    def capture(model, *args):
        finals.append([p.detach().clone() for p in model.parameters()])
        return real(model, *args)

    monkeypatch.setattr(utility, "_accuracy", capture)
    return finals


def test_tracks_that_differ_only_on_the_attackers_side_train_the_same_model(monkeypatch):
    """The key says two tracks share a utility run; the run itself must agree: the imprint track and its
    noise-aware variant (case.imprint_scale), and the natural track and its trained variant (model state), end
    FedSGD with the same weights, bit for bit; a different defense parameter gives another key."""
    from dglbench.leaderboard.utility import utility_key

    finals = _capture_final_weights(monkeypatch)
    gaussian = _info("gaussian", sigma=0.01)
    pairs = (("natural-imprint@2", "natural-imprint-scaled@2"), ("natural-convnet5@2", "natural-convnet5-trained@2"))
    for a, b in pairs:
        ta, tb = load_track(a), load_track(b)
        assert ta.content_hash != tb.content_hash and utility_key(ta, gaussian) == utility_key(tb, gaussian)
        finals.clear()
        for t in (ta, tb):
            fedsgd_accuracy(t, "gaussian", {"sigma": 0.01}, rounds=2)
        assert all(torch.equal(x, y) for x, y in zip(*finals))
    natural = load_track("natural-convnet5@2")
    assert utility_key(natural, gaussian) != utility_key(natural, _info("gaussian", sigma=0.1))
    assert utility_key(natural, gaussian) != utility_key(load_track("faces-convnet5@2"), gaussian)
    assert utility_key(natural, gaussian) != utility_key(load_track("natural-imprint@2"), gaussian)  # batch 32


def test_a_shared_utility_run_is_computed_once_and_reused_by_the_sibling_track(tmp_path, monkeypatch):
    import dglbench.leaderboard.utility as utility
    from dglbench.leaderboard.utility import FedSGDOutcome, shared_fedsgd_accuracy

    calls = []

    def fake(track, defense, params, **kw):
        calls.append((track.ref, defense, dict(params)))
        return FedSGDOutcome(50.0 + len(calls), 291, 200, 100.0 * len(calls))

    monkeypatch.setattr(utility, "fedsgd_accuracy", fake)
    plain, scaled = load_track("natural-imprint@2"), load_track("natural-imprint-scaled@2")
    first, on = shared_fedsgd_accuracy(plain, _info("gaussian", sigma=0.01), tmp_path)
    assert on is None and first == FedSGDOutcome(51.0, 291, 200, 100.0)
    again, on = shared_fedsgd_accuracy(scaled, _info("gaussian", sigma=0.01), tmp_path)
    assert on == "natural-imprint@2" and again == first and len(calls) == 1  # the cost of the run it reused
    other, on = shared_fedsgd_accuracy(scaled, _info("gaussian", sigma=0.1), tmp_path)
    assert on is None and other.test_accuracy == 52.0 and len(calls) == 2
    (stored,) = [p for p in (tmp_path / "utility").iterdir() if "51.0" in p.read_text()]
    stored.write_text("{not json")  # a damaged record is recomputed, never trusted
    redone, on = shared_fedsgd_accuracy(scaled, _info("gaussian", sigma=0.01), tmp_path)
    assert on is None and redone.test_accuracy == 53.0 and len(calls) == 3


def test_an_interrupted_fedsgd_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, monkeypatch):
    """A six-hour utility run must survive the end of a session: stopped after 3 of 6 rounds and resumed, it
    ends with the weights of a run without a break, bit for bit; a damaged checkpoint is ignored."""
    import dglbench.defenses

    track = load_track("digits-convnet5")
    finals = _capture_final_weights(monkeypatch)
    straight = fedsgd_accuracy(track, "gaussian", {"sigma": 0.01}, rounds=6)

    real_apply, calls = dglbench.defenses.apply_defense, [0]

    def stop_in_round_4(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 3 * track.utility.clients:
            raise KeyboardInterrupt
        return real_apply(*args, **kwargs)

    ckpt = tmp_path / "run.partial.pt"
    monkeypatch.setattr(dglbench.defenses, "apply_defense", stop_in_round_4)
    with pytest.raises(KeyboardInterrupt):
        fedsgd_accuracy(track, "gaussian", {"sigma": 0.01}, rounds=6, checkpoint=ckpt, checkpoint_every=0)
    assert torch.load(ckpt, weights_only=True)["done"] == 3
    counted = [0]

    def count(*args, **kwargs):
        counted[0] += 1
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(dglbench.defenses, "apply_defense", count)
    resumed = fedsgd_accuracy(track, "gaussian", {"sigma": 0.01}, rounds=6, checkpoint=ckpt, checkpoint_every=0)
    assert counted[0] == 3 * track.utility.clients  # only rounds 4-6 ran
    assert resumed.test_accuracy == straight.test_accuracy and not ckpt.exists()
    assert all(torch.equal(a, b) for a, b in zip(finals[0], finals[1]))

    ckpt.write_bytes(b"not a checkpoint")  # damaged: the run starts afresh and still gets the same weights
    fedsgd_accuracy(track, "gaussian", {"sigma": 0.01}, rounds=6, checkpoint=ckpt, checkpoint_every=0)
    assert all(torch.equal(a, b) for a, b in zip(finals[0], finals[2])) and not ckpt.exists()
