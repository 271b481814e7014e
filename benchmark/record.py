"""VictimRecord: the one typed, schema-versioned record of one victim under one trial.

Every stage writes into it (:class:`~dglbench.modules.LeakageModule` builds it, in one place) and every
consumer reads it by attribute: the record writer, sweep reports and plots, the leaderboard's
aggregation and verification, and the CLI. On disk it is JSON (:meth:`VictimRecord.to_dict`; NaN and
inf are stored as ``null``, since JSON has neither), read back by :meth:`VictimRecord.from_dict`,
which converts records of the previous schema version (:func:`migrate`) and refuses unknown ones.

Parts of a record (schema version 2):

* ``estimate`` — the I2F estimate (:class:`Estimate`), ``None`` when the trial does not estimate.
* ``attacks`` — one :class:`AttackOutcome` per attack of the trial's suite (its settings, run facts,
  status and reconstruction metrics); a failed attack is kept with its reason.
* ``worst`` — the suite's worst case (:class:`WorstCase`): per metric, the value of the attack best
  for the attacker and the attack it came from; failed attacks are left out and counted.
* ``metrics`` (property) — the worst case's values, the victim's privacy numbers.
* ``utility``, ``defense``, ``timings``, ``provenance``.

Example:
    >>> from dglbench.record import AttackOutcome, VictimRecord, worst_case
    >>> a = AttackOutcome("dlg", status="ok", metrics={"psnr": 31.0, "l2_error": 0.5})
    >>> b = AttackOutcome("inverting_gradients", status="ok", metrics={"psnr": 12.0, "l2_error": 0.4})
    >>> w = worst_case([a, b])
    >>> w.metrics["psnr"], w.source["psnr"], w.metrics["l2_error"], w.source["l2_error"]
    (31.0, 'dlg', 0.4, 'inverting_gradients')
    >>> rec = VictimRecord(trial_id="t", victim_id=0, attacks=(a, b), worst=w)
    >>> VictimRecord.from_dict(rec.to_dict()) == rec
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dglbench.errors import DglbenchError
from dglbench.metrics import METRICS

__all__ = [
    "SCHEMA_VERSION",
    "AttackOutcome",
    "Estimate",
    "RecordError",
    "Timings",
    "VictimRecord",
    "WorstCase",
    "as_record",
    "damping_key",
    "jsonable",
    "migrate",
    "worst_case",
]

#: Version of the per-victim record layout. 1: one attack, ``i2f`` / ``attack`` / ``metrics`` / ``seconds``;
#: 2: an attack suite with its worst case, ``estimate`` / ``attacks`` / ``worst`` / ``timings``.
SCHEMA_VERSION = 2


class RecordError(DglbenchError, ValueError):
    """A stored record that cannot be read (unknown schema version, missing or mistyped part)."""


def _finite(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def jsonable(obj: Any) -> Any:
    """A JSON-able copy: tensors as lists, tuples as lists, NaN and inf as ``None``."""
    from torch import Tensor

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return _finite(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def _build(cls: type, data: Any, where: str) -> Any:
    """``cls(**data)`` for a plain dataclass part; a missing required key or an unknown key is a RecordError."""
    if not isinstance(data, dict):
        raise RecordError(f"{where} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecordError(f"{where} has an unknown key {unknown[0]!r}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise RecordError(f"{where}: {exc}") from None


def damping_key(eps: float, relative: bool = False) -> str:
    """The key of an exact-I2F term: ``repr(ε)`` for an absolute damping, ``"rel:" + repr(r)`` for ε = r · λ_max.

    Example:
        >>> damping_key(0.1), damping_key(1e-3, relative=True)
        ('0.1', 'rel:0.001')
    """
    return f"rel:{float(eps)!r}" if relative else repr(float(eps))


@dataclass(frozen=True)
class Estimate:
    """The I2F estimate of one victim (:func:`dglbench.influence.estimate_i2f`).

    ``lower_bound`` is the paper's Eq. 5, ``‖Kᵀδ‖ / λ_max``: the bound of exact I2F at ε = 0. Every dict is keyed
    by the term's damping (:func:`damping_key`: ``"0.1"`` absolute, ``"rel:0.001"`` a fraction of ``λ_max``):

    * ``exact`` — ``‖(KᵀK + εI)⁻¹ Kᵀδ‖``; ``exact_converged`` / ``exact_residual`` its CG solve;
    * ``exact_lower_bound`` — ``‖Kᵀδ‖ / (λ_max + ε)``, the lower bound of that same damped quantity;
    * ``eps_used`` / ``eps_relative`` — the absolute ε the solve used and ``ε / λ_max``, for every term;
    * ``exact_ill_conditioned`` — the solve did not converge, or CG's smallest Ritz value was too small to trust
      (matters at ε = 0, the minimum-norm solution);
    * ``exact_rescaled`` / ``exact_rescaled_layer`` — attack-aware I2F, of ``s* g̃ − g`` with the best rescaling
      of ``g̃`` (one ``s*``, ``rescale``, or one per parameter tensor): what a cosine attack (global or
      layer-wise) faces. Old records lack the newer keys (empty dicts, ``None``).
    """

    lower_bound: float | None
    jt_delta: float | None
    max_eigenvalue: float | None
    lower_bound_converged: bool
    exact: dict[str, float | None] = field(default_factory=dict)
    exact_converged: dict[str, bool] = field(default_factory=dict)
    exact_residual: dict[str, float | None] = field(default_factory=dict)
    products: int | None = None
    exact_lower_bound: dict[str, float | None] = field(default_factory=dict)
    eps_used: dict[str, float | None] = field(default_factory=dict)
    eps_relative: dict[str, float | None] = field(default_factory=dict)
    exact_ill_conditioned: dict[str, bool] = field(default_factory=dict)
    exact_rescaled: dict[str, float | None] = field(default_factory=dict)
    exact_rescaled_layer: dict[str, float | None] = field(default_factory=dict)
    rescale: float | None = None


@dataclass(frozen=True)
class AttackOutcome:
    """One attack of the suite on one victim.

    Attributes:
        name: the registered attack; ``key`` names it in the worst case (``name``, or ``name#i`` when the
            suite runs the same attack twice).
        params: its settings.
        adaptive: whether the defense declared it (an attack that knows the defense).
        status / reason: ``"ok"``, or ``"failed"`` with the reason (the attack's or the metrics'), or
            ``"skipped"`` with the reason the attack does not apply to the case or model
            (:meth:`dglbench.attacks.Attack.applicable`); a skipped attack is neither a failure nor in the worst case.
        iterations / restarts / final_loss / seconds / label_source: as the attack reports them; the
            restart kept is the one of least attack loss, never chosen by the private image.
        metrics: the reconstruction metrics (:meth:`dglbench.metrics.ReconstructionMetrics.to_dict`).
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    adaptive: bool = False
    status: str = "ok"
    reason: str | None = None
    iterations: int | None = None
    restarts: int | None = None
    final_loss: float | None = None
    seconds: float | None = None
    label_source: str | None = None
    metrics: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)
        if self.status not in ("ok", "failed", "skipped"):
            raise RecordError(f"attack {self.key!r}: status must be 'ok', 'failed' or 'skipped', got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.metrics is not None


@dataclass(frozen=True)
class WorstCase:
    """The suite's worst case for one victim (AutoAttack-style): per metric, the attacker's best value.

    Attributes:
        status / reason: ``"failed"`` when no attack of the suite produced metrics (all failed or were skipped).
        attacks: attacks that count (succeeded); ``failed``: attacks left out because they failed;
            ``skipped``: attacks left out because they do not apply to the case or model.
        metrics: per metric of :data:`dglbench.metrics.METRICS`, the highest value of a higher-is-better
            metric (PSNR, SSIM) and the lowest of the others (errors, LPIPS) over the attacks that count.
        source: per metric, the ``key`` of the attack that value came from.
    """

    status: str
    reason: str | None
    attacks: int
    failed: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    skipped: int = 0


def worst_case(outcomes: Sequence[AttackOutcome]) -> WorstCase:
    """The worst case over ``outcomes``; a victim broken by any one attack is broken in the worst case.

    Example:
        >>> w = worst_case([AttackOutcome("a", status="failed", reason="diverged")])
        >>> w.status, w.failed, w.reason
        ('failed', 1, 'every attack of the suite failed: a: diverged')
    """
    ok = [o for o in outcomes if o.ok]
    skipped = sum(o.status == "skipped" for o in outcomes)
    failed = len(outcomes) - len(ok) - skipped
    if not ok:
        reasons = "; ".join(f"{o.key}: {o.reason}" for o in outcomes) or "the suite is empty"
        what = (
            "was skipped" if skipped == len(outcomes) and outcomes else "failed or was skipped" if skipped else "failed"
        )
        return WorstCase("failed", f"every attack of the suite {what}: {reasons}", 0, failed, skipped=skipped)
    values: dict[str, float | None] = {}
    source: dict[str, str] = {}
    for name, info in METRICS.items():
        candidates = [(o.metrics or {}).get(name) for o in ok]
        best = info.best(candidates)
        values[name] = best
        if best is not None:
            source[name] = ok[candidates.index(best)].key
    return WorstCase("ok", None, len(ok), failed, values, source, skipped)


@dataclass(frozen=True)
class Timings:
    """Seconds of one victim's stages, and peak memory.

    A victim's own time where its stage runs alone: ``defense`` and ``metrics``. Where victims run together (the
    vectorized I2F estimate, each attack's batched run) one victim's time is not separable, so the step's time
    and its victim count are recorded: ``i2f_step`` seconds for ``i2f_victims`` victims, and per attack key
    ``attack_steps[key] = {"seconds": ..., "victims": ...}``. ``i2f`` and ``attack`` are those seconds divided by
    the victim count (an equal share; the own time when the count is 1). ``total`` is the wall time of the whole
    step the victim ran in, shared by ``step_victims`` victims. An estimate shared by a sweep's trials that differ
    only in the defense (:class:`~dglbench.modules.I2FShare`) is timed once, in the trial that computed it
    (``i2f_victims = 1``). Records written before these keys existed hold only the shares and ``total``.
    """

    defense: float = 0.0
    i2f: float = 0.0
    attack: float = 0.0
    metrics: float = 0.0
    total: float = 0.0
    peak_memory_mb: float | None = None
    i2f_step: float | None = None
    i2f_victims: int | None = None
    attack_steps: dict[str, dict[str, float]] = field(default_factory=dict)
    step_victims: int | None = None


@dataclass(frozen=True)
class VictimRecord:
    """One victim under one trial: estimate, attack suite, worst case, utility, defense, timings, provenance.

    ``status`` is ``"failed"`` (with ``reason``) when the defense, the estimate or every attack failed;
    the record is kept, never dropped. ``config`` is the trial's :meth:`~dglbench.trial.TrialConfig.to_dict`.
    """

    trial_id: str
    victim_id: int
    schema_version: int = SCHEMA_VERSION
    indices: tuple[int, ...] = ()
    protocol: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    mode: str = "both"
    status: str = "ok"
    reason: str | None = None
    estimate: Estimate | None = None
    attacks: tuple[AttackOutcome, ...] = ()
    worst: WorstCase | None = None
    utility: dict[str, Any] | None = None
    defense: dict[str, Any] | None = None
    timings: Timings = field(default_factory=Timings)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in ("ok", "failed"):
            raise RecordError(f"victim {self.victim_id}: status must be 'ok' or 'failed', got {self.status!r}")
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        object.__setattr__(self, "attacks", tuple(self.attacks))

    # ------------------------------------------------------------------------------------------- reading
    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def metrics(self) -> dict[str, float | None] | None:
        """The victim's privacy numbers: the suite's worst case (one attack: that attack's values)."""
        return None if self.worst is None or self.worst.status != "ok" else dict(self.worst.metrics)

    def metric(self, name: str, attack: str | None = None) -> float | None:
        """One metric of an ok record: of the worst case (``attack=None`` or ``"worst"``), or of attack ``attack``."""
        if not self.ok:
            return None
        if attack in (None, "worst"):
            return _finite((self.metrics or {}).get(name))
        outcome = self.attack(attack)
        return None if outcome is None or not outcome.ok else _finite((outcome.metrics or {}).get(name))

    def attack(self, key: str) -> AttackOutcome | None:
        """The outcome of the attack ``key`` (or, failing that, the first attack named ``key``)."""
        return next((a for a in self.attacks if a.key == key), None) or next(
            (a for a in self.attacks if a.name == key), None
        )

    @property
    def floors(self) -> dict[str, dict[str, float | None] | None]:
        """Chance floors of the victim's metrics (mean image, random image): the same for every attack."""
        first = next((a for a in self.attacks if a.metrics), None)
        return dict((first.metrics or {}).get("floors") or {}) if first else {}

    def to(self, *args: Any, **kwargs: Any) -> VictimRecord:
        """Itself: a record holds no tensors (Lightning moves returned predictions with ``.to``)."""
        return self

    # ------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (NaN and inf as ``None``), the inverse of :meth:`from_dict`."""

        def plain(obj: Any) -> Any:
            if hasattr(obj, "__dataclass_fields__"):
                return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
            if isinstance(obj, (list, tuple)):
                return [plain(v) for v in obj]
            return obj

        return jsonable(plain(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VictimRecord:
        """Read a stored record, converting the previous schema version; anything else is a :class:`RecordError`."""
        if not isinstance(data, dict):
            raise RecordError(f"a victim record must be a mapping, got {type(data).__name__}")
        version = data.get("schema_version")
        if version == 1:
            data = migrate(data)
        elif version != SCHEMA_VERSION:
            raise RecordError(
                f"victim record of schema version {version!r}: this dglbench reads versions 1 and {SCHEMA_VERSION}; "
                "upgrade dglbench or re-run the trial"
            )
        where = f"victim {data.get('victim_id')!r} of trial {data.get('trial_id')!r}"
        values = dict(data)
        for key in ("trial_id", "victim_id"):
            if key not in values:
                raise RecordError(f"a victim record has no {key!r}")
        if values.get("estimate") is not None:
            values["estimate"] = _build(Estimate, values["estimate"], f"{where}: estimate")
        values["attacks"] = tuple(
            _build(AttackOutcome, a, f"{where}: attacks[{i}]") for i, a in enumerate(values.get("attacks") or ())
        )
        if values.get("worst") is not None:
            values["worst"] = _build(WorstCase, values["worst"], f"{where}: worst")
        values["timings"] = _build(Timings, values.get("timings") or {}, f"{where}: timings")
        values["indices"] = tuple(values.get("indices") or ())
        return _build(cls, values, where)

    def with_attacks(self, outcomes: Sequence[AttackOutcome]) -> VictimRecord:
        """A copy with ``outcomes`` as its suite and their worst case."""
        return replace(self, attacks=tuple(outcomes), worst=worst_case(outcomes) if outcomes else None)


def as_record(record: VictimRecord | dict[str, Any]) -> VictimRecord:
    """``record`` as a :class:`VictimRecord` (a stored dict of any readable version is converted)."""
    return record if isinstance(record, VictimRecord) else VictimRecord.from_dict(record)


def migrate(old: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 record (one attack: ``i2f``, ``attack``, ``metrics``, ``seconds``) as a schema-2 dict.

    The one attack becomes a one-attack suite, and its worst case is that attack's values. An attack
    whose run succeeded but whose metrics failed becomes a failed outcome carrying the record's reason.
    """
    new = {k: v for k, v in old.items() if k not in ("i2f", "attack", "metrics", "seconds", "peak_memory_mb")}
    new["schema_version"] = SCHEMA_VERSION
    new["estimate"] = old.get("i2f")
    config = old.get("config") or {}
    outcomes = []
    attack = old.get("attack")
    if isinstance(attack, dict):
        fact_keys = ("iterations", "restarts", "final_loss", "seconds", "label_source")
        status, reason = attack.get("status", "ok"), attack.get("reason")
        metrics = old.get("metrics") if status == "ok" else None
        if status == "ok" and metrics is None:
            status, reason = "failed", old.get("reason") or "no metrics"
        outcomes.append(
            AttackOutcome(
                name=str(attack.get("name")),
                params=dict(config.get("attack_params") or {}),
                status=status,
                reason=reason,
                metrics=metrics,
                **{k: attack.get(k) for k in fact_keys},
            )  # fmt: skip
        )
    rec = VictimRecord.from_dict({**new, "attacks": [], "worst": None}).with_attacks(outcomes)
    seconds = dict(old.get("seconds") or {})
    timings = {k: seconds.get(k, 0.0) for k in ("defense", "i2f", "attack", "metrics", "total")}
    timings["peak_memory_mb"] = old.get("peak_memory_mb")
    out = rec.to_dict()
    out["timings"] = timings
    return out
