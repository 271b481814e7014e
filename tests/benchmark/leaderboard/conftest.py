"""Fixtures of the leaderboard tests: a leaderboard folder in tmp, and SYNTHETIC per-victim records.

The synthetic records are :class:`~dglbench.record.VictimRecord` objects with made-up numbers: they exercise
aggregation, validation, ranking and rendering without running attacks. They never reach
``leaderboards/``.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from dglbench.io import atomic_write_json
from dglbench.leaderboard.schema import Hardware, Seconds, VictimsFile
from dglbench.leaderboard.store import entry_paths
from dglbench.leaderboard.submit import build_entry, defense_info
from dglbench.leaderboard.track import load_track
from dglbench.leaderboard.typed import to_dict
from dglbench.record import AttackOutcome, Estimate, Timings, VictimRecord

REPO = Path(__file__).resolve().parents[3]
TRACK_FILE = REPO / "leaderboards" / "v1" / "tracks" / "digits-convnet5.yaml"


@pytest.fixture
def lb_root(tmp_path: Path) -> Path:
    """An empty leaderboard folder holding a copy of the embedded track."""
    root = tmp_path / "leaderboards"
    (root / "v1" / "tracks").mkdir(parents=True)
    shutil.copy(TRACK_FILE, root / "v1" / "tracks" / TRACK_FILE.name)
    return root


def synthetic_records(track, defense: str, params: dict, *, psnr: float = 30.0, failed: set[int] = frozenset(),
                      seed: int = 0) -> tuple[list[VictimRecord], list[str]]:  # fmt: skip
    """SYNTHETIC :class:`VictimRecord` objects for every (attack, victim) of ``track``: made-up numbers around ``psnr``.

    A victim in ``failed`` has a failed attack (kept, with its reason), so the victim's worst case fails too.
    """
    from dglbench import __version__

    rng = random.Random(seed)
    configs = track.trial_configs(defense, params)
    records = []
    for t, config in enumerate(configs):
        for v in range(track.num_victims):
            ok = v not in failed
            p = psnr + t + rng.uniform(-2, 2)
            metrics = {
                "l2_error": 10 ** (-p / 20) * 8, "rmse": 10 ** (-p / 20), "mse": 10 ** (-p / 10), "psnr": p,
                "ssim": min(1.0, p / 80), "lpips_alex": None, "lpips_vgg": None, "label_accuracy": 1.0,
                "unavailable": {"lpips_alex": "synthetic", "lpips_vgg": "synthetic"},
                "floors": {"mean_image": {"l2_error": 5.0, "rmse": 0.6, "mse": 0.4, "psnr": 11.0, "ssim": 0.1,
                                          "label_accuracy": None},
                           "random_image": {"l2_error": 11.0, "rmse": 1.4, "mse": 2.0, "psnr": 5.0, "ssim": 0.2}},
            }  # fmt: skip
            estimate = None
            if config.estimate:
                lb = rng.uniform(0.01, 1.0)
                estimate = Estimate(
                    lower_bound=lb, jt_delta=lb * 0.02, max_eigenvalue=0.02, lower_bound_converged=True,
                    exact={repr(float(e)): lb * 3 for e in config.eps},
                    exact_converged={repr(float(e)): True for e in config.eps}, products=40,
                )  # fmt: skip
            outcome = AttackOutcome(
                name=config.attack, params=dict(config.attack_params), status="ok" if ok else "failed",
                reason=None if ok else "attack: synthetic failure", metrics=metrics if ok else None,
            )  # fmt: skip
            record = VictimRecord(
                trial_id=config.trial_id, victim_id=v, indices=(v,), protocol={"dataset": "digits"},
                config=config.to_dict(), status="ok" if ok else "failed",
                reason=None if ok else "attack: synthetic failure", estimate=estimate,
                utility={"gradient_cosine": rng.uniform(0.5, 1.0)},
                defense={"name": defense, "params": params, "privacy": None}, timings=Timings(total=0.1),
                provenance={"dglbench": __version__, "torch": "x", "timm": "x", "lightning": "x", "python": "3",
                            "git_commit": None, "device": "cpu: synthetic", "time": "2026-01-01T00:00:00+00:00"},
            )  # fmt: skip
            records.append(record.with_attacks([outcome]))
    return records, [c.trial_id for c in configs]


def write_synthetic_entry(root: Path, defense: str = "gaussian", params: dict | None = None, *, psnr: float = 30.0,
                          accuracy: float = 80.0, undefended: float = 80.0, failed: set[int] = frozenset(),
                          seed: int = 0):  # fmt: skip
    """Build a SYNTHETIC entry with ``build_entry`` (the submit code path) and store it under ``root``."""
    track = load_track("digits-convnet5", root)
    info = defense_info(defense, dict(params or {}))
    records, trial_ids = synthetic_records(track, defense, info.params, psnr=psnr, failed=failed, seed=seed)
    entry = build_entry(
        track, info, records, trial_ids, test_accuracy=accuracy, undefended=undefended, test_images=359,
        hardware=Hardware("cpu", 1, "cpu: synthetic", 2), seconds=Seconds(1.0, 1.0, 2.0),
    )  # fmt: skip
    entry_path, victims_path = entry_paths(track.ref, info.name, entry.provenance.config_hash, root)
    atomic_write_json(victims_path, to_dict(VictimsFile(1, entry.entry_id, [r.to_dict() for r in records])))
    atomic_write_json(entry_path, to_dict(entry))
    return entry, entry_path, victims_path


@pytest.fixture
def synthetic_entry():
    """The :func:`write_synthetic_entry` function."""
    return write_synthetic_entry
