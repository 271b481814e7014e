"""``dglbench leaderboard verify``: re-run some victims of an entry and compare number by number.

The entry's trials are rebuilt from its track and defense, restricted to the first ``K`` victims
(victim ``j`` does not depend on how many victims a trial has, and every per-victim random
generator depends only on the trial seed and ``j``), run again, and each stored per-victim value
is compared with the re-run under the track's ``tolerances``:

=====================  =========================================================
I2F (lower bound,      relative ``i2f_rel`` (solver tolerances are 1e-3 or finer)
exact, ‖Kᵀδ‖, λ_max)
l2_error, rmse, mse    relative ``l2_error_rel``
psnr                   absolute ``psnr_abs`` dB
ssim                   absolute ``ssim_abs``
lpips_*                absolute ``lpips_abs``
label_accuracy         absolute ``label_accuracy_abs``
gradient_cosine        absolute ``gradient_cosine_abs``
status                 equal
FedSGD test accuracy   absolute ``test_accuracy_abs`` points (with ``--utility``)
=====================  =========================================================

On the machine type an entry was made on (CPU), a re-run agrees to float32 rounding (fewer victims
are batched together than in the submission; seen: 1e-6 relative on I2F, 1e-3 dB on PSNR); the
tolerances leave room for other hardware, where long attack optimizations drift.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dglbench.errors import ConfigError
from dglbench.leaderboard.store import load_entry, load_victims, victims_path
from dglbench.leaderboard.track import Track, load_track

__all__ = ["Check", "verify_entry"]


@dataclass(frozen=True)
class Check:
    """One compared number."""

    trial: str
    victim: int | None
    quantity: str
    stored: Any
    rerun: Any
    tolerance: str
    ok: bool


def _tolerance(track: Track, quantity: str) -> tuple[str, float]:
    t = track.tolerances
    name = quantity.rsplit(".", 1)[-1]
    if quantity.startswith("i2f."):
        return "rel", t.i2f_rel
    table = {
        "l2_error": ("rel", t.l2_error_rel), "rmse": ("rel", t.l2_error_rel), "mse": ("rel", 2 * t.l2_error_rel),
        "psnr": ("abs", t.psnr_abs), "ssim": ("abs", t.ssim_abs), "label_accuracy": ("abs", t.label_accuracy_abs),
        "gradient_cosine": ("abs", t.gradient_cosine_abs),
    }  # fmt: skip
    if name.startswith("lpips"):
        return "abs", t.lpips_abs
    return table[name]


def _close(a: Any, b: Any, kind: str, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if kind == "rel":
        return math.isclose(a, b, rel_tol=tol, abs_tol=1e-12)
    return abs(a - b) <= tol + 1e-12


def _values(rec: dict[str, Any], track: Track) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i2f = rec.get("i2f")
    if isinstance(i2f, dict):
        for key in ("lower_bound", "jt_delta", "max_eigenvalue"):
            out[f"i2f.{key}"] = i2f.get(key)
        for eps, value in (i2f.get("exact") or {}).items():
            out[f"i2f.exact[{eps}]"] = value
    metrics = rec.get("metrics") if rec.get("status") == "ok" else None
    for m in track.metrics:
        out[f"metrics.{m}"] = (metrics or {}).get(m)
    out["utility.gradient_cosine"] = (rec.get("utility") or {}).get("gradient_cosine")
    return out


def verify_entry(
    path: str | Path,
    victims: int = 2,
    *,
    devices: int = 1,
    accelerator: str = "cpu",
    utility: bool = False,
    root: str | Path | None = None,
    work_dir: str | Path | None = None,
    data_root: str | None = None,
) -> list[Check]:
    """Re-run the first ``victims`` victims of the entry at ``path``; one :class:`Check` per compared number.

    Args:
        path: the entry file.
        victims: how many victims to re-run (``1 .. num_victims``).
        devices / accelerator: as for ``submit``.
        utility: also re-run the FedSGD utility protocol with the defense and compare its test accuracy.
        root: the leaderboard data folder.
        work_dir: where the re-run's trial records go (a temporary folder by default).
        data_root: where the dataset's files are (not needed for embedded datasets).
    """
    from dglbench.runner import run_trial

    entry = load_entry(path)
    track = load_track(entry.track, root)
    if not 1 <= victims <= track.num_victims:
        raise ConfigError(f"--victims must be between 1 and {track.num_victims}, got {victims}")
    stored = load_victims(victims_path(path)).records
    by_key = {(r["trial_id"], r["victim_id"]): r for r in stored}
    configs = track.trial_configs(entry.defense.spec, entry.defense.params, data_root)
    checks: list[Check] = []
    scratch = tempfile.TemporaryDirectory(prefix="dglbench-verify-") if work_dir is None else None
    out_dir = Path(scratch.name if scratch else work_dir)  # type: ignore[arg-type]
    reruns = []
    try:
        for config in configs:
            subset = config.with_overrides({"dataset_params.num_victims": victims})
            reruns.append(
                run_trial(subset, devices=devices, accelerator=accelerator, output_dir=out_dir, progress=False)
            )
    finally:
        if scratch is not None:
            scratch.cleanup()
    for trial_id, rerun in zip(entry.provenance.trial_ids, reruns):
        for rec in rerun:
            old = by_key.get((trial_id, rec["victim_id"]))
            if old is None:
                checks.append(Check(trial_id, rec["victim_id"], "record", None, "present", "exists", False))
                continue
            checks.append(
                Check(trial_id, rec["victim_id"], "status", old["status"], rec["status"], "equal",
                      old["status"] == rec["status"])
            )  # fmt: skip
            new_values = _values(rec, track)
            for quantity, value in _values(old, track).items():
                kind, tol = _tolerance(track, quantity.split("[")[0])
                new = new_values.get(quantity)
                ok = _close(value, new, kind, tol)
                checks.append(Check(trial_id, rec["victim_id"], quantity, value, new, f"{kind} {tol:g}", ok))
    if utility:
        from dglbench.leaderboard.utility import fedsgd_accuracy

        device = "cuda" if accelerator in ("gpu", "cuda") else "cpu"
        got = fedsgd_accuracy(
            track, entry.defense.spec, entry.defense.params, device=device, data_root=data_root
        ).test_accuracy
        want = entry.utility.fedsgd.test_accuracy
        tol = track.tolerances.test_accuracy_abs
        checks.append(Check("fedsgd", None, "test_accuracy", want, got, f"abs {tol:g}", abs(got - want) <= tol))
    return checks
