"""``dglbench leaderboard verify``: validate an entry, then re-run victims drawn at random and compare.

1. The entry is validated first (:func:`~dglbench.leaderboard.validate.validate_entry`): a file that
   does not parse, or whose aggregates do not follow from its victims file, is not re-run.
2. Its defense must be allowed to run (:mod:`~dglbench.leaderboard.trust`): a built-in defense runs;
   an installed entry point or a ``package.module:Class`` path is third-party code and runs only with
   ``trust_code=True`` (``--trust-code``), after naming the package it imports.
3. ``m`` of the track's ``n`` victims are drawn uniformly at random without replacement, with a seed
   from the operating system (:mod:`secrets`) unless one is given; the seed is reported so the same
   draw can be repeated. ``all_victims=True`` re-runs every victim.
4. The sampled victims of every trial are re-run (victim ``j`` and every random draw it uses depend
   only on the trial seed and ``j``; the others are marked done and not computed), and each stored
   per-victim value is compared with the re-run under the track's ``tolerances``:

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
succeeded attacks      equal (protocol 2: the failure pattern; a diverged attack has failed)
worst.<metric>         protocol 2: the worst case over the attacks that succeeded, with the metric's tolerance
FedSGD test accuracy   absolute ``test_accuracy_abs`` points (with ``--utility``)
=====================  =========================================================

**What a random sample catches.** An entry whose stored numbers were edited for ``k`` of its ``n``
victims (aggregates edited to match, so ``validate`` passes) is caught when the sample holds at
least one edited victim. With ``m`` victims drawn, that probability is hypergeometric:
``P = 1 − C(n−k, m) / C(n, m)`` (:func:`catch_probability`). On ``natural-convnet5@2`` (n = 64) at
the default m = 2: k = 1 gives 0.031, k = 4 gives 0.12, k = 16 gives 0.44, k = 32 gives 0.75.
Re-running always the same victims would catch nothing outside them; ``all_victims`` catches every
edit the tolerances can see.

On the machine type an entry was made on (CPU), a re-run agrees to float32 rounding (fewer victims
are batched together than in the submission; seen: 1e-6 relative on I2F, 1e-3 dB on PSNR); the
tolerances leave room for other hardware, where long attack optimizations drift.

Example:
    >>> round(catch_probability(n=8, k=6, m=2), 4)  # 1 - C(2, 2) / C(8, 2) = 1 - 1/28
    0.9643
    >>> sample_victims(8, 2, seed=7) == sample_victims(8, 2, seed=7)
    True
"""

from __future__ import annotations

import json
import math
import random
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dglbench.errors import ConfigError, DglbenchError
from dglbench.leaderboard.store import load_entry, load_victims, victims_path
from dglbench.leaderboard.track import Track, load_track
from dglbench.leaderboard.trust import CodeSource, require_trust
from dglbench.record import VictimRecord, as_record

__all__ = [
    "Check",
    "InvalidEntryError",
    "Verification",
    "catch_probability",
    "new_seed",
    "sample_victims",
    "verify_entry",
]


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


class InvalidEntryError(DglbenchError, ValueError):
    """The entry does not pass ``validate``; it is not re-run. ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) found by validate; fix them before verifying: "
                         f"{self.problems[0] if self.problems else ''}")  # fmt: skip


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify_entry`.

    Attributes:
        checks: one :class:`Check` per compared number.
        victims: the re-run victim ids (sorted).
        num_victims: the track's number of victims ``n``.
        seed: the seed the victims were drawn with (``None`` when every victim was re-run).
        code: where the defense's code came from.
    """

    checks: list[Check]
    victims: list[int]
    num_victims: int
    seed: int | None
    code: CodeSource

    @property
    def ok(self) -> bool:
        """Every compared number reproduced."""
        return all(c.ok for c in self.checks)


def catch_probability(n: int, k: int, m: int) -> float:
    """Probability that ``m`` of ``n`` victims drawn without replacement hold at least one of ``k`` edited ones.

    ``1 − C(n−k, m) / C(n, m)`` (hypergeometric: ``P(X ≥ 1)``, ``X`` the edited victims in the sample).
    """
    if not (0 <= k <= n and 0 <= m <= n):
        raise ConfigError(f"need 0 <= k <= n and 0 <= m <= n, got n={n}, k={k}, m={m}")
    return 1.0 - math.comb(n - k, m) / math.comb(n, m)


def new_seed() -> int:
    """A fresh seed from the operating system's randomness (not predictable from the entry or the clock)."""
    return secrets.randbits(32)


def sample_victims(n: int, m: int, seed: int) -> list[int]:
    """``m`` distinct victim ids of ``0 .. n-1``, drawn uniformly by ``seed``, sorted."""
    if not 1 <= m <= n:
        raise ConfigError(f"--victims must be between 1 and {n}, got {m}")
    return sorted(random.Random(seed).sample(range(n), m))


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


def _values(record: VictimRecord | dict[str, Any], track: Track) -> dict[str, Any]:
    """The compared numbers of a record; metrics are those of the track's attack for the trial (its first)."""
    rec = as_record(record)
    out: dict[str, Any] = {}
    if rec.estimate is not None:
        for key in ("lower_bound", "jt_delta", "max_eigenvalue"):
            out[f"i2f.{key}"] = getattr(rec.estimate, key)
        for eps, value in rec.estimate.exact.items():
            out[f"i2f.exact[{eps}]"] = value
    if track.protocol == 2:
        out.update(_worst_values(rec, track))
    else:
        tracked = rec.attacks[0].key if rec.attacks else None
        for m in track.metrics:
            out[f"metrics.{m}"] = rec.metric(m, tracked) if tracked else None
    out["utility.gradient_cosine"] = (rec.utility or {}).get("gradient_cosine")
    return out


def _worst_values(rec: VictimRecord, track: Track) -> dict[str, Any]:
    """Protocol 2: which attacks succeeded (compared equal) and the worst case over them, per metric."""
    from dglbench.leaderboard.protocol import succeeded
    from dglbench.record import worst_case

    ok = [o for o in rec.attacks if rec.ok and succeeded(o, track.ranking.leakage)]
    out: dict[str, Any] = {"succeeded": ",".join(sorted(o.key for o in ok)) or "none"}
    w = worst_case(ok) if ok else None
    for m in track.metrics:
        out[f"worst.{m}"] = w.metrics.get(m) if w else None
    return out


def _parts_dir(out: Path, trial_id: str) -> Path:
    """Where the runner keeps a trial's finished victims (``<out>/parts/<trial id>``): those it skips on resume."""
    from dglbench.layout import RunLayout

    return RunLayout(out).parts(trial_id).directory


def _rerun(
    configs: Sequence[Any], victims: Sequence[int], stored: dict[tuple[str, int], dict[str, Any]],
    trial_ids: Sequence[str], out: Path, *, devices: int, accelerator: str,
) -> list[list[dict[str, Any]]]:  # fmt: skip
    """Re-run ``victims`` of every trial; the others are marked done (their stored record) and not computed.

    The trials keep the track's number of victims, so the victim protocol is the submission's.
    Returns, per trial, the re-run records of ``victims`` only.
    """
    from dglbench.hardware import one_cpu_thread, torch_device
    from dglbench.io import atomic_write_json
    from dglbench.runner import run_trial

    wanted = set(victims)
    reruns = []
    for trial_id, config in zip(trial_ids, configs):
        n = int(config.dataset_params.get("num_victims", 0)) or len(wanted)
        for j in range(n):
            if j not in wanted and (trial_id, j) in stored:
                part = _parts_dir(out, config.trial_id) / f"victim-{j:06d}.json"
                if not part.exists():
                    atomic_write_json(part, json.loads(json.dumps(stored[(trial_id, j)])))
        with one_cpu_thread(torch_device(accelerator)):  # as submit ran them
            records = run_trial(
                config, devices=devices, accelerator=accelerator, output_dir=out, progress=False, log_progress=True
            )
        reruns.append([r for r in records if r.victim_id in wanted])
    return reruns


def verify_entry(
    path: str | Path,
    victims: int = 2,
    *,
    seed: int | None = None,
    all_victims: bool = False,
    trust_code: bool = False,
    devices: int = 1,
    accelerator: str = "cpu",
    utility: bool = False,
    root: str | Path | None = None,
    work_dir: str | Path | None = None,
    data_root: str | None = None,
) -> Verification:
    """Validate the entry at ``path``, re-run ``victims`` of its victims drawn at random, and compare.

    Args:
        path: the entry file.
        victims: how many victims to draw, ``m`` (``1 .. n``; see :func:`catch_probability`).
        seed: the draw's seed (``None``: a fresh one from :func:`new_seed`, reported in the result).
        all_victims: re-run every victim instead of a sample.
        trust_code: allow a defense that is not built in (an entry point or module path) to be imported.
        devices / accelerator: as for ``submit``.
        utility: also re-run the FedSGD utility protocol with the defense and compare its test accuracy.
        root: the leaderboard data folder.
        work_dir: where the re-run's trial records go (a temporary folder by default).
        data_root: where the dataset's files are (not needed for embedded datasets).

    Raises:
        InvalidEntryError: the entry does not pass ``validate``.
        UntrustedCodeError: the defense is third-party code and ``trust_code`` is false.
    """
    from dglbench.leaderboard.validate import validate_entry

    problems = validate_entry(path, root)
    if problems:
        raise InvalidEntryError(problems)
    entry = load_entry(path)
    code = require_trust(entry.defense, trust_code)
    track = load_track(entry.track, root)
    n = track.num_victims
    if all_victims:
        seed, chosen = None, list(range(n))
    else:
        seed = new_seed() if seed is None else seed
        chosen = sample_victims(n, victims, seed)
    stored = load_victims(victims_path(path)).records
    by_key = {(r["trial_id"], r["victim_id"]): r for r in stored}
    configs = track.trial_configs(entry.defense.spec, entry.defense.params, data_root)
    checks: list[Check] = []
    scratch = tempfile.TemporaryDirectory(prefix="dglbench-verify-") if work_dir is None else None
    base = Path(scratch.name if scratch else work_dir)  # type: ignore[arg-type]
    out_dir = base / ("all" if all_victims else "victims-" + "-".join(map(str, chosen)))
    try:
        reruns = _rerun(configs, chosen, by_key, entry.provenance.trial_ids, out_dir, devices=devices,
                        accelerator=accelerator)  # fmt: skip
    finally:
        if scratch is not None:
            scratch.cleanup()
    for trial_id, rerun in zip(entry.provenance.trial_ids, reruns):
        for rec in map(as_record, rerun):
            old = by_key.get((trial_id, rec.victim_id))
            if old is None:
                checks.append(Check(trial_id, rec.victim_id, "record", None, "present", "exists", False))
                continue
            same = old["status"] == rec.status
            checks.append(Check(trial_id, rec.victim_id, "status", old["status"], rec.status, "equal", same))
            new_values = _values(rec, track)
            for quantity, value in _values(old, track).items():
                new = new_values.get(quantity)
                if quantity == "succeeded":  # the failure pattern of the suite: the same attacks succeed
                    checks.append(Check(trial_id, rec.victim_id, quantity, value, new, "equal", value == new))
                    continue
                kind, tol = _tolerance(track, quantity.split("[")[0])
                ok = _close(value, new, kind, tol)
                checks.append(Check(trial_id, rec.victim_id, quantity, value, new, f"{kind} {tol:g}", ok))
    if utility:
        from dglbench.hardware import torch_device
        from dglbench.leaderboard.utility import fedsgd_accuracy

        device = torch_device(accelerator).type  # `auto` means CUDA where there is one, as in submit
        got = fedsgd_accuracy(
            track, entry.defense.spec, entry.defense.params, device=device, data_root=data_root
        ).test_accuracy
        want = entry.utility.fedsgd.test_accuracy
        tol = track.tolerances.test_accuracy_abs
        checks.append(Check("fedsgd", None, "test_accuracy", want, got, f"abs {tol:g}", abs(got - want) <= tol))
    return Verification(checks, chosen, n, seed, code)
