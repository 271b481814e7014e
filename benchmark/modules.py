"""LightningModules: defense → I2F → attack suite → metrics per victim batch, one record per victim.

The algorithms are plain functions and classes (:mod:`dglbench.influence`,
:mod:`dglbench.attacks`, :mod:`dglbench.defenses`, :mod:`dglbench.metrics`); this module only
wires them together so that Lightning can shard victims across devices and machines.

Runs under ``trainer.predict`` with ``Trainer(inference_mode=False)``: the
products ``K v`` and ``Kᵀ u`` and the attacks need gradients. Under DDP each rank handles the victims
``j`` with ``j % world_size == rank`` and :class:`RecordWriter` writes each victim's record to its own
file; nothing is appended to a shared file.
"""

from __future__ import annotations

import hashlib
import platform
import resource
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from dglbench.case import DefenseContext, make_payload
from dglbench.errors import ConfigError, DglbenchError
from dglbench.influence import estimate_i2f
from dglbench.io import atomic_write_json
from dglbench.layout import TrialImages, TrialLayout
from dglbench.metrics import METRICS
from dglbench.record import AttackOutcome, Estimate, Timings, VictimRecord, damping_key, jsonable, worst_case
from dglbench.trial import TrialConfig
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

__all__ = [
    "I2FShare",
    "LeakageModule",
    "RecordWriter",
    "SuiteAttack",
    "attack_suite",
    "build_victim_model",
    "initialized_model",
    "log_record",
    "provenance",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: ``save_images`` unset: a trial saves reconstructions when one image has at most this many values (3×64×64).
SAVE_IMAGES_MAX_PIXELS = 3 * 64 * 64


def build_victim_model(config: TrialConfig, num_classes: int, image_shape: Sequence[int]) -> torch.nn.Module:
    """The trial's victim model from timm's registry, initialized, in its training state (``model_state``:
    :mod:`dglbench.model_state`), twice differentiable, in the case's mode."""
    from dglbench import models
    from dglbench.model_state import load_trained_state, victim_checkpoint

    model = initialized_model(config, num_classes, image_shape)
    checkpoint = victim_checkpoint(config)
    if checkpoint is not None:
        load_trained_state(model, checkpoint)
    models.make_twice_differentiable(model)
    config.case_obj.prepare(model)
    return model.to(_DTYPES[config.dtype])


def initialized_model(config: TrialConfig, num_classes: int, image_shape: Sequence[int]) -> torch.nn.Module:
    """The trial's model from timm's registry as its initialization scheme leaves it (float32, train mode).

    Deterministic for ``config.init_seed``: timm's constructor runs under a generator seeded by it, then the
    scheme (:func:`dglbench.models.init.initialize`) draws from its own; the global generator is not advanced.
    """
    import timm
    from dglbench import models
    from dglbench.models.init import initialize
    from dglbench.models.zoo import ZOO

    zoo_kwargs = next((dict(e.kwargs) for e in ZOO if e.name == config.model), {})
    kwargs = {"num_classes": num_classes, "in_chans": int(image_shape[0]), **zoo_kwargs, **config.model_params}
    if "img_size" in kwargs or config.model in models.CLASSIC_MODELS:
        kwargs["img_size"] = int(image_shape[-1])  # the data decides the input size
    try:
        # the architecture's own initialization draws from the global generator: seeded by init_seed here (and
        # the caller's generator left as it was), so that ``init: default`` and any parameter a scheme leaves
        # alone (a ViT's position embedding) are the same in every build of the trial
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            model = timm.create_model(config.model, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"unknown model {config.model!r}; list them with `dglbench models PATTERN`") from None
        raise
    except TypeError as exc:
        raise ConfigError(f"bad model_params for {config.model!r}: {exc}") from None
    initialize(model, config.init, seed=config.init_seed)
    return model


@lru_cache(maxsize=1)
def _static_provenance() -> dict[str, Any]:
    import lightning
    import timm
    from dglbench import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "dglbench": __version__, "torch": torch.__version__, "timm": timm.__version__,
        "lightning": lightning.__version__, "python": platform.python_version(), "git_commit": commit,
        "hostname": socket.gethostname(),
    }  # fmt: skip


def provenance(device: torch.device, dtype: str) -> dict[str, Any]:
    """Package versions, git commit, device, dtype, host and time of a record."""
    from dglbench.hardware import device_name

    return {
        **_static_provenance(),
        "device": f"{device.type}: {device_name(device)}",
        "dtype": dtype,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _victim_generator(seed: int, victim_id: int, device: torch.device, salt: str) -> torch.Generator:
    """A generator that depends only on (seed, victim, purpose): results do not depend on sharding."""
    digest = hashlib.sha256(f"{seed}:{victim_id}:{salt}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class _Victim:
    """One victim in flight: its tensors and the parts of its record as the stages fill them in."""

    victim_id: int
    images: Tensor
    labels: Tensor
    indices: list[int]
    start: float
    clean: Tensor | None = None
    defended: Tensor | None = None
    status: str = "ok"
    reason: str | None = None
    estimate: Estimate | None = None
    outcomes: list[AttackOutcome] = field(default_factory=list)
    utility: dict[str, Any] | None = None
    defense: dict[str, Any] | None = None
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("defense", "i2f", "attack", "metrics"), 0.0)
    )
    steps: dict[str, Any] = field(default_factory=lambda: {"attack_steps": {}})  # shared steps' seconds, victims
    reconstructions: dict[str, Tensor] = field(default_factory=dict)  # attack key → images (normalized space)

    def fail(self, stage: str, exc: BaseException) -> None:
        self.status, self.reason = "failed", f"{stage}: {_reason(exc)}"


@dataclass(frozen=True)
class SuiteAttack:
    """One attack of a trial's suite, built: its key in the record, settings, and whether the defense declared it."""

    key: str
    name: str
    params: dict[str, Any]
    adaptive: bool
    attack: Any
    skip: str | None = None


def attack_suite(config: TrialConfig, defense: Any) -> list[SuiteAttack]:
    """The trial's attacks, then (with ``config.adaptive``) the adaptive attacks ``defense`` declares.

    An adaptive attack is the suite's attack it extends, knowing the defense: it takes the settings of the
    first listed attack whose class it subclasses (``ig_l2`` those of ``inverting_gradients``: budget, step size,
    TV weight...; every setting it accepts), overridden by the defense's mechanism parameters. Where the suite
    lists no attack it extends, it has no budget to take and is recorded as skipped, with that reason. Keys are
    the attack names, ``name#2``, ``name#3``... when a name repeats.
    """
    import dataclasses as dc

    from dglbench.attacks import ATTACKS, create_attack
    from dglbench.defenses.base import adaptive_attacks_for

    specs: list[tuple[str, dict[str, Any], bool, str | None]] = [
        (a["name"], dict(a["params"]), False, None) for a in config.attacks
    ]
    if config.adaptive and specs:
        for name, params in adaptive_attacks_for(defense):
            cls = ATTACKS.get(name)
            parent = next((p for n, p, declared, _ in specs if not declared and _extends(cls, ATTACKS.get(n))), None)
            accepted = {f.name for f in dc.fields(cls)} if dc.is_dataclass(cls) else set(parent or ())
            skip = None
            if parent is None:
                bases = sorted(n for n in ATTACKS.list() if n != name and _extends(cls, ATTACKS.get(n)))
                skip = (
                    f"adaptive attack {name} extends {' / '.join(bases) or 'an attack'}, which the suite does not "
                    "list: it has no budget to take"
                )
            specs.append((name, {**{k: v for k, v in (parent or {}).items() if k in accepted}, **params}, True, skip))
    suite, seen = [], {}
    for name, params, adaptive, skip in specs:
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}#{seen[name]}"
        suite.append(SuiteAttack(key, name, params, adaptive, create_attack(name, **params), skip))
    return suite


def _extends(cls: Any, base: Any) -> bool:
    return isinstance(cls, type) and isinstance(base, type) and issubclass(cls, base)


class I2FShare:
    """The I2F of each victim computed once for a group of trials that differ only in the defense.

    The first trial of the group to estimate a victim stacks every member's perturbation of that victim
    (each member's defense, same draws as its own trial) into one ``[m, d_θ]`` matrix: one linearization,
    one Lanczos run for ``λ_max`` and one batched CG per victim for the whole group. The other members'
    estimates wait here until their trials run. Lives in one process (under DDP each rank holds its own,
    for the victims it owns); a victim missing from it is estimated by its own trial as before.
    A shared estimate's ``products`` count the group's solve; its ``i2f`` seconds go to the member that ran it.

    Args:
        configs: the group's trials; all equal but for ``defense`` and ``defense_params`` (see :meth:`key`).
    """

    def __init__(self, configs: Sequence[TrialConfig]) -> None:
        self.configs = list(configs)
        keys = {self.key(c) for c in self.configs}
        if len(keys) > 1:
            raise ConfigError("an I2FShare groups trials that differ only in the defense")
        self.estimates: dict[tuple[str, int], Estimate] = {}
        self.runs = 0  # estimate_i2f calls made for the group (one per victim when nothing fails)

    @staticmethod
    def key(config: TrialConfig) -> str:
        """What trials of one group share: the whole configuration but the defense and its parameters."""
        import json

        data = config.to_dict()
        data.pop("defense", None), data.pop("defense_params", None)
        return json.dumps(data, sort_keys=True, default=str)

    def take(self, trial_id: str, victim_id: int) -> Estimate | None:
        return self.estimates.pop((trial_id, victim_id), None)


class LeakageModule(pl.LightningModule):
    """Runs one trial over the victims of a :class:`~dglbench.datamodules.base.VictimDataModule`.

    Per victim batch: the defense, the I2F estimate, every attack of the suite (the trial's attacks and
    the defense's adaptive attacks), their metrics, and one :class:`~dglbench.record.VictimRecord` per
    victim with the suite's worst case.

    Args:
        config: the trial (a :class:`~dglbench.trial.TrialConfig` or its dict).
        mode: ``"both"`` (estimate and attack), ``"estimate"`` (I2F only: cheap) or ``"attack"``;
            default from the config (``attack: null`` means estimate only).
        records_dir: where :class:`RecordWriter` finds finished victims (they are skipped).
        i2f_share: the :class:`I2FShare` of the trial's group (a sweep's trials that differ only in the
            defense): each victim's I2F is computed once for the whole group.
        images_dir: where each victim's originals and reconstructions are saved
            (:func:`dglbench.layout.save_reconstructions`; ``save_images`` of the trial decides whether).

    Example:
        >>> module = LeakageModule({"attack": None, "dataset_params": {"num_victims": 2}})
        >>> module.mode
        'estimate'
    """

    def __init__(
        self,
        config: TrialConfig | dict[str, Any],
        mode: str | None = None,
        records_dir: str | None = None,
        i2f_share: I2FShare | None = None,
        images_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
        default = (
            "both" if self.config.attack and self.config.estimate else ("attack" if self.config.attack else "estimate")
        )
        self.mode = mode or default
        if self.mode not in ("both", "estimate", "attack"):
            raise ConfigError(f"mode must be 'both', 'estimate' or 'attack', got {mode!r}")
        if self.mode != "estimate" and not self.config.attack:
            raise ConfigError(f"mode {self.mode!r} needs an attack, but the trial has attack: null")
        self.layout = TrialLayout(Path(records_dir)) if records_dir else None
        self.images = TrialImages(Path(images_dir)) if images_dir else None
        self.victim_model: torch.nn.Module | None = None
        self.i2f_share = i2f_share if i2f_share is not None and len(i2f_share.configs) > 1 else None
        if self.i2f_share is not None and self.config.trial_id not in {c.trial_id for c in self.i2f_share.configs}:
            raise ConfigError(f"trial {self.config.trial_id} is not in the I2FShare it was given")

    # ------------------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        from dglbench.defenses import create_defense

        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            raise ConfigError("LeakageModule needs a VictimDataModule: trainer.predict(module, datamodule=dm)")
        self.dm = dm
        self.victim_model = build_victim_model(self.config, dm.num_classes, dm.image_shape)
        if self.config.case_obj.server == "malicious":  # the client trains the model the server sent
            from dglbench.attacks.imprint import imprint_victim_model

            self.victim_model = imprint_victim_model(
                self.victim_model, dm, self.config.case_obj.imprint_bins, self.config.case_obj.imprint_scale
            )
        self.defense = create_defense(self.config.defense, **self.config.defense_params)
        self.suite = attack_suite(self.config, self.defense) if self.mode != "estimate" else []
        self.lpips = None
        if self.mode != "estimate" and self.config.lpips:
            from dglbench.metrics import LpipsScorer

            self.lpips = [LpipsScorer("alex"), LpipsScorer("vgg")]  # unavailable (with reason) without weights

    def _prepare_static(self) -> None:
        dtype = _DTYPES[self.config.dtype]
        mean = torch.tensor(self.dm.mean, dtype=dtype, device=self.device)
        std = torch.tensor(self.dm.std, dtype=dtype, device=self.device)
        self.box = ((0 - mean) / std, (1 - mean) / std)
        self.mean_image = self.dm.mean_image().to(self.device, dtype)

    # ------------------------------------------------------------------------------------------- steps
    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> list[VictimRecord]:
        with torch.enable_grad():
            return self.run_victims(batch)

    def _done(self, victim_id: int) -> bool:
        return self.layout is not None and self.layout.victim(victim_id).exists()

    def run_victims(self, batch: dict[str, Any]) -> list[VictimRecord]:
        """Process a batch of ``V`` victims (``images [V, B, C, H, W]``); one record per victim."""
        if not hasattr(self, "box"):
            self._prepare_static()
        assert self.victim_model is not None
        self.config.case_obj.prepare(self.victim_model)  # Lightning's predict loop put every submodule in eval mode
        dtype = _DTYPES[self.config.dtype]
        ids = [int(v) for v in torch.as_tensor(batch["victim_id"]).reshape(-1)]
        victims = [
            _Victim(ids[i], batch["images"][i].to(self.device, dtype), batch["labels"][i].to(self.device),
                    batch["indices"][i].tolist(), time.perf_counter())
            for i, v in enumerate(ids) if not self._done(v)
        ]  # fmt: skip
        for v in victims:
            v.steps["step_victims"] = len(victims)
        self._defend(victims)
        if self.mode in ("both", "estimate"):
            self._estimate([v for v in victims if v.status == "ok"])
        if self.mode in ("both", "attack"):
            self._attack([v for v in victims if v.status == "ok"])
        records = [self._record(v) for v in victims]
        if self.images is not None and self.mode != "estimate" and self._saves_images():
            for v, rec in zip(victims, records):
                self._save_images(v, rec)
        for rec in records:
            self._log(rec)
        return records

    def _saves_images(self) -> bool:
        """``save_images`` of the trial; unset: on for images of at most :data:`SAVE_IMAGES_MAX_PIXELS` values."""
        if self.config.save_images is not None:
            return bool(self.config.save_images)
        return int(torch.tensor(self.dm.image_shape).prod()) <= SAVE_IMAGES_MAX_PIXELS

    def _save_images(self, v: _Victim, rec: VictimRecord) -> None:
        """The victim's originals and each attack's reconstruction as uint8, before its record marks it done."""
        from dglbench.datamodules.base import owned_by_rank
        from dglbench.layout import save_reconstructions

        assert self.images is not None
        if self._trainer is not None and not bool(
            owned_by_rank(v.victim_id, self.trainer.global_rank, self.trainer.world_size)
        ):
            return
        source = rec.worst.source if rec.worst is not None and rec.worst.status == "ok" else {}
        worst = source.get("psnr") or source.get("l2_error")
        pixels = {key: self.dm.denormalize(images) for key, images in v.reconstructions.items()}
        save_reconstructions(self.images.victim(v.victim_id), self.dm.denormalize(v.images), pixels, worst, v.indices)

    # ------------------------------------------------------------------------------------------- the record
    def _record(self, v: _Victim) -> VictimRecord:
        """The one place a :class:`VictimRecord` is built from a finished victim."""
        status, reason = v.status, v.reason
        worst = None
        if self.mode != "estimate" and status == "ok":
            worst = worst_case(v.outcomes)
            if worst.status != "ok":
                one_failed = len(v.outcomes) == 1 and v.outcomes[0].status == "failed"
                status, reason = "failed", v.outcomes[0].reason if one_failed else f"attack: {worst.reason}"
        timings = Timings(
            **v.seconds, total=time.perf_counter() - v.start, peak_memory_mb=_peak_memory_mb(self.device), **v.steps
        )
        cfg = self.config
        return VictimRecord(
            trial_id=cfg.trial_id, victim_id=v.victim_id, indices=tuple(v.indices),
            protocol=dict(getattr(self.dm, "protocol", {})), config=cfg.to_dict(), mode=self.mode,
            status=status, reason=reason, estimate=v.estimate, attacks=tuple(v.outcomes), worst=worst,
            utility=v.utility, defense=v.defense, timings=timings,
            provenance={**provenance(self.device, cfg.dtype), "seeds": {
                "trial": cfg.seed, "init": cfg.init_seed, "victims": int(cfg.dataset_params.get("seed", 0)),
            }, **self._threat_model()},
        )  # fmt: skip

    def _threat_model(self) -> dict[str, Any]:
        """The resolved case (every field, defaults included) and the model's training state, for the record."""
        import dataclasses as dc

        from dglbench.model_state import describe_model_state, victim_checkpoint

        cfg = self.config
        return {"case": dc.asdict(cfg.case_obj), "model_state": describe_model_state(cfg, victim_checkpoint(cfg))}

    # ------------------------------------------------------------------------------------------- stages
    def _defend(self, victims: list[_Victim]) -> None:
        from dglbench.defenses import defense_name, describe_defense, run_defense

        assert self.victim_model is not None
        for v in victims:
            start = time.perf_counter()
            try:
                gen = _victim_generator(self.config.seed, v.victim_id, self.device, "defense")
                ctx = DefenseContext(self.victim_model, v.images, v.labels, self.config.case_obj, gen)
                out = run_defense(self.defense, ctx)
                if not bool(torch.isfinite(out.clean).all()):
                    raise DglbenchError("the clean gradient has NaN or inf values")
                v.clean, v.defended = out.clean, out.defended
                cos = torch.nn.functional.cosine_similarity(out.clean, out.defended, dim=0)
                v.utility = {"gradient_cosine": float(cos)}
                v.defense = jsonable(describe_defense(self.defense))
            except DglbenchError as exc:
                v.fail("defense", exc)
            except Exception as exc:  # third-party defenses may raise anything: one victim fails, the rest go on
                v.fail("defense", exc)
                v.reason = f"{v.reason} (defense {defense_name(self.defense)!r})"
            v.seconds["defense"] = time.perf_counter() - start

    def _estimate(self, victims: list[_Victim]) -> None:
        if self.i2f_share is not None:
            victims = self._estimate_shared(victims)
        if not victims:
            return
        start = time.perf_counter()
        try:
            self._estimate_group(victims)
        except (DglbenchError, RuntimeError, ValueError):
            for v in victims:  # isolate the failing victim(s); the rest go on
                try:
                    self._estimate_group([v])
                except (DglbenchError, RuntimeError, ValueError) as exc:
                    v.fail("i2f", exc)
        elapsed = time.perf_counter() - start
        for v in victims:
            v.seconds["i2f"] = elapsed / len(victims)
            v.steps.update(i2f_step=elapsed, i2f_victims=len(victims))

    def _estimate_shared(self, victims: list[_Victim]) -> list[_Victim]:
        """Estimates from the group's :class:`I2FShare` (computing them for every member); the victims left over."""
        from dglbench.defenses import create_defense, run_defense

        assert self.victim_model is not None and self.i2f_share is not None
        share, cfg, left = self.i2f_share, self.config, []
        members = [c for c in share.configs if c.trial_id != cfg.trial_id]
        for v in victims:
            start = time.perf_counter()
            if (cached := share.take(cfg.trial_id, v.victim_id)) is not None:
                self._apply_estimate(v, cached)
                v.seconds["i2f"] = time.perf_counter() - start
                v.steps.update(i2f_step=v.seconds["i2f"], i2f_victims=1)
                continue
            rows, owners = [v.defended - v.clean], [cfg.trial_id]  # type: ignore[operator]
            for member in members:  # each member's draws are its own trial's: same seed, victim and salt
                try:
                    defense = create_defense(member.defense, **member.defense_params)
                    gen = _victim_generator(member.seed, v.victim_id, self.device, "defense")
                    out = run_defense(defense, DefenseContext(self.victim_model, v.images, v.labels, cfg.case_obj, gen))
                except Exception:  # noqa: BLE001 - that member's own trial meets (and records) the failure
                    continue
                rows.append(out.defended - out.clean)
                owners.append(member.trial_id)
            try:
                est = self._run_estimate(v.images, v.labels, torch.stack(rows))
                share.runs += 1
            except (DglbenchError, RuntimeError, ValueError):
                left.append(v)  # estimated (or failed) on its own, as without a share
                continue
            for i, owner in enumerate(owners):
                estimate = self._row_estimate(est, i)
                if owner == cfg.trial_id:
                    self._apply_estimate(v, estimate)
                else:
                    share.estimates[(owner, v.victim_id)] = estimate
            v.seconds["i2f"] = time.perf_counter() - start
            v.steps.update(i2f_step=v.seconds["i2f"], i2f_victims=1)
        return left

    def _run_estimate(self, images: Any, labels: Any, deltas: Any) -> Any:
        """:func:`~dglbench.influence.estimate_i2f` with the trial's settings (victims, or one victim's rows); ``K``
        is the Jacobian of what the case's client shares (the gradient under FedSGD, ``Δθ`` under FedAvg)."""
        assert self.victim_model is not None
        cfg = self.config
        return estimate_i2f(
            self.victim_model, images, labels, deltas, case=cfg.case_obj, eps=cfg.eps, eps_relative=cfg.eps_relative,
            rescale=True, lower_bound_tol=cfg.lower_bound_tol, cg_tol=cfg.cg_tol, cg_max_iter=cfg.cg_max_iter,
            seed=cfg.seed,
        )  # fmt: skip

    @staticmethod
    def _row_estimate(est: Any, i: int) -> Estimate:
        lb = est.lower_bound
        terms = {damping_key(e, rel): r for rel, results in ((False, est.exact), (True, est.relative))
                 for e, r in results.items()}  # fmt: skip
        lam = _finite_or_none(float(lb.max_eigenvalue[i]))

        def each(name: str) -> dict[str, float | None]:
            return {k: _finite_or_none(_item(getattr(r, name), i)) for k, r in terms.items()}

        used = each("eps_used")
        return Estimate(
            lower_bound=_finite_or_none(float(lb.value[i])), jt_delta=_finite_or_none(float(lb.jt_delta[i])),
            max_eigenvalue=lam, lower_bound_converged=bool(lb.converged[i]),
            exact=each("value"), exact_converged={k: bool(r.converged[i]) for k, r in terms.items()},
            exact_residual=each("residual"), products=int(est.products[i]),
            exact_lower_bound=each("lower_bound"), eps_used=used,
            eps_relative={k: None if e is None or not lam else e / lam for k, e in used.items()},
            exact_ill_conditioned={k: bool(_item(r.ill_conditioned, i)) for k, r in terms.items()},
            exact_rescaled=each("rescaled"), exact_rescaled_layer=each("rescaled_layer"),
            rescale=None if est.scale is None else _finite_or_none(float(est.scale[i])),
        )  # fmt: skip

    @staticmethod
    def _apply_estimate(v: _Victim, estimate: Estimate) -> None:
        values = [estimate.lower_bound, estimate.max_eigenvalue, *estimate.exact.values()]
        if any(x is None for x in values):
            v.fail("i2f", DglbenchError(
                "non-finite I2F value: the K products overflowed (untrained logits too large?); "
                "try dtype: float64 or another initialization"
            ))  # fmt: skip
        v.estimate = estimate

    def _estimate_group(self, victims: list[_Victim]) -> None:
        assert self.victim_model is not None
        deltas = [v.defended - v.clean for v in victims]  # type: ignore[operator]
        est = self._run_estimate([v.images for v in victims], [v.labels for v in victims], deltas)
        for i, v in enumerate(victims):
            self._apply_estimate(v, self._row_estimate(est, i))

    def _attack(self, victims: list[_Victim]) -> None:
        if not victims or not self.suite:
            return
        assert self.victim_model is not None
        payloads = [make_payload(self.config.case_obj, v.defended, v.labels) for v in victims]
        attacker_model = self.config.case_obj.attacker_model(self.victim_model)  # case.bn_stats
        for i, member in enumerate(self.suite):
            salt = "attack" if i == 0 else f"attack:{member.key}"  # the first attack's draws as before suites
            gens = [_victim_generator(self.config.seed, v.victim_id, self.device, salt) for v in victims]
            skip = member.skip or member.attack.applicable(self.config.case_obj, self.victim_model)
            if skip is not None:  # not a failure and not in the worst case; the reason goes into the record
                for v in victims:
                    v.outcomes.append(self._outcome(member, None, "skipped", skip))
                continue
            start = time.perf_counter()
            try:
                results = member.attack.run_many(
                    attacker_model, payloads, self.dm.image_shape, box=self.box, generator=gens
                )
            except (DglbenchError, RuntimeError, ValueError) as exc:
                for v in victims:
                    v.outcomes.append(self._outcome(member, None, "failed", f"attack: {_reason(exc)}"))
                continue
            elapsed = time.perf_counter() - start
            for v, res in zip(victims, results):
                v.seconds["attack"] += elapsed / len(victims)
                v.steps["attack_steps"][member.key] = {"seconds": elapsed, "victims": len(victims)}
                if res.status != "ok":
                    v.outcomes.append(self._outcome(member, res, "failed", f"attack: {res.reason}"))
                    continue
                v.reconstructions[member.key] = res.images.detach()
                t0 = time.perf_counter()
                try:
                    metrics = self._metrics(v, res)
                    v.outcomes.append(self._outcome(member, res, "ok", None, metrics))
                except (DglbenchError, RuntimeError, ValueError) as exc:
                    v.outcomes.append(self._outcome(member, res, "failed", f"metrics: {_reason(exc)}"))
                v.seconds["metrics"] += time.perf_counter() - t0

    def _metrics(self, v: _Victim, res: Any) -> dict[str, Any]:
        from dglbench.metrics import reconstruction_metrics

        gen = _victim_generator(self.config.seed, v.victim_id, self.device, "metrics")
        metrics = reconstruction_metrics(
            res.images, v.images, denormalize=self.dm.denormalize, normalize=self.dm.normalize,
            mean_image=self.mean_image, lpips=self.lpips, generator=gen, labels_hat=res.labels, labels=v.labels,
        )  # fmt: skip
        return metrics.to_dict()

    @staticmethod
    def _outcome(
        member: SuiteAttack, res: Any, status: str, reason: str | None, metrics: dict[str, Any] | None = None
    ) -> AttackOutcome:
        facts = {}
        if res is not None:
            facts = {
                "iterations": res.iterations, "restarts": res.restarts, "final_loss": _finite_or_none(res.final_loss),
                "seconds": res.seconds, "label_source": res.label_source,
            }  # fmt: skip
        return AttackOutcome(
            name=member.name, params=dict(member.params), key=member.key, adaptive=member.adaptive, status=status,
            reason=reason, metrics=metrics, **facts,
        )  # fmt: skip

    def _log(self, record: VictimRecord) -> None:
        """Scalars to the loggers as each victim finishes (one device; under DDP the runner logs after merging)."""
        if self._trainer is None or not self.trainer.loggers or self.trainer.world_size > 1:
            return  # Lightning's loggers write on rank 0 only: the other ranks' victims would be lost
        log_record(self.trainer.loggers, record)

    def configure_optimizers(self) -> None:  # the benchmark never trains the victim model
        return None


def log_record(loggers: Sequence[Any], record: VictimRecord) -> None:
    """A record's scalars to Lightning loggers (CSV by default, W&B when configured); step = victim id.

    Keys: ``status_ok``, ``i2f/<term>`` (``i2f/exact@<eps>``, ``i2f/lower_bound@<eps>``, ``i2f/rescaled@<eps>``,
    ``i2f/rescaled_layer@<eps>``; ``<eps>`` a :func:`~dglbench.record.damping_key`), ``metrics/<metric>`` (the
    suite's worst case), ``attack/<key>/<metric>`` for each attack of a suite of several, ``utility/<name>``.
    """
    flat: dict[str, float] = {"status_ok": float(record.ok)}
    est = record.estimate
    if est is not None:
        terms = {"lower_bound": est.lower_bound, "jt_delta": est.jt_delta, "max_eigenvalue": est.max_eigenvalue,
                 "products": est.products, **{f"exact@{k}": v for k, v in est.exact.items()},
                 **{f"lower_bound@{k}": v for k, v in est.exact_lower_bound.items()},
                 **{f"rescaled@{k}": v for k, v in est.exact_rescaled.items()},
                 **{f"rescaled_layer@{k}": v for k, v in est.exact_rescaled_layer.items()}}  # fmt: skip
        flat.update({f"i2f/{k}": float(v) for k, v in terms.items() if v is not None})
    flat.update({f"metrics/{k}": float(v) for k, v in (record.metrics or {}).items() if v is not None})
    if len(record.attacks) > 1:
        for outcome in record.attacks:
            for name in METRICS:
                value = record.metric(name, outcome.key)
                if value is not None:
                    flat[f"attack/{outcome.key}/{name}"] = value
    for key, value in (record.utility or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"utility/{key}"] = float(value)
    for logger in loggers:
        logger.log_metrics(flat, step=record.victim_id)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not isinstance(exc, DglbenchError):  # e.g. "ZeroDivisionError: division by zero"
        text = f"{type(exc).__name__}: {text}"
    return text


def _item(values: Tensor | None, i: int) -> float | None:
    return None if values is None else float(values[i])


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or x != x or x in (float("inf"), float("-inf")) else float(x)


class RecordWriter(BasePredictionWriter):
    """Writes each finished victim's record to its file in a trial's part folder (atomic), on the rank that owns it."""

    def __init__(self, directory: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.layout = TrialLayout(Path(directory))

    def write_records(self, trainer: pl.Trainer, records: list[VictimRecord]) -> None:
        from dglbench.datamodules.base import owned_by_rank

        for rec in records:
            if bool(owned_by_rank(rec.victim_id, trainer.global_rank, trainer.world_size)):
                atomic_write_json(self.layout.victim(rec.victim_id), rec.to_dict())

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.write_records(trainer, prediction or [])
