"""LightningModules: defense → I2F → attack → metrics per victim batch, one record per victim.

The algorithms are plain functions and classes (:mod:`dglbench.influence`,
:mod:`dglbench.attacks`, :mod:`dglbench.defenses`, :mod:`dglbench.metrics`); this module only
wires them together so that Lightning can shard victims across devices and machines.

Runs under ``trainer.predict`` (or ``trainer.test``) with ``Trainer(inference_mode=False)``: the
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
from dglbench.trial import SCHEMA_VERSION, TrialConfig
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

__all__ = ["LeakageModule", "RecordWriter", "build_victim_model", "log_record", "provenance"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_victim_model(config: TrialConfig, num_classes: int, image_shape: Sequence[int]) -> torch.nn.Module:
    """The trial's victim model from timm's registry, initialized, twice differentiable, in the case's mode."""
    import timm
    from dglbench import models
    from dglbench.models.init import initialize
    from dglbench.models.zoo import ZOO

    zoo_kwargs = next((dict(e.kwargs) for e in ZOO if e.name == config.model), {})
    kwargs = {"num_classes": num_classes, "in_chans": int(image_shape[0]), **zoo_kwargs, **config.model_params}
    if "img_size" in kwargs or config.model in models.CLASSIC_MODELS:
        kwargs["img_size"] = int(image_shape[-1])  # the data decides the input size
    try:
        model = timm.create_model(config.model, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"unknown model {config.model!r}; list them with `dglbench models PATTERN`") from None
        raise
    except TypeError as exc:
        raise ConfigError(f"bad model_params for {config.model!r}: {exc}") from None
    initialize(model, config.init, seed=config.init_seed)
    models.make_twice_differentiable(model)
    config.case_obj.prepare(model)
    return model.to(_DTYPES[config.dtype])


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


class LeakageModule(pl.LightningModule):
    """Runs one trial over the victims of a :class:`~dglbench.datamodules.base.VictimDataModule`.

    Args:
        config: the trial (a :class:`~dglbench.trial.TrialConfig` or its dict).
        mode: ``"both"`` (estimate and attack), ``"estimate"`` (I2F only: cheap) or ``"attack"``;
            default from the config (``attack: null`` means estimate only).
        records_dir: where :class:`RecordWriter` finds finished victims (they are skipped).

    Example:
        >>> module = LeakageModule({"attack": None, "dataset_params": {"num_victims": 2}})
        >>> module.mode
        'estimate'
    """

    def __init__(
        self, config: TrialConfig | dict[str, Any], mode: str | None = None, records_dir: str | None = None
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
        self.records_dir = Path(records_dir) if records_dir else None
        self.victim_model: torch.nn.Module | None = None

    # ------------------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        from dglbench.attacks import create_attack
        from dglbench.defenses import create_defense

        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            raise ConfigError("LeakageModule needs a VictimDataModule: trainer.predict(module, datamodule=dm)")
        self.dm = dm
        self.victim_model = build_victim_model(self.config, dm.num_classes, dm.image_shape)
        self.defense = create_defense(self.config.defense, **self.config.defense_params)
        self.attack = (
            create_attack(self.config.attack, **self.config.attack_params) if self.mode != "estimate" else None
        )
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
    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> list[dict[str, Any]]:
        with torch.enable_grad():
            return self.run_victims(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int = 0) -> None:
        records = self.predict_step(batch, batch_idx)
        for cb in self.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, RecordWriter):
                cb.write_records(self.trainer, records)

    def _done(self, victim_id: int) -> bool:
        return self.records_dir is not None and (self.records_dir / f"victim-{victim_id:06d}.json").exists()

    def run_victims(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Process a batch of ``V`` victims (``images [V, B, C, H, W]``); one record per victim."""
        if not hasattr(self, "box"):
            self._prepare_static()
        dtype = _DTYPES[self.config.dtype]
        ids = [int(v) for v in torch.as_tensor(batch["victim_id"]).reshape(-1)]
        todo = [i for i, v in enumerate(ids) if not self._done(v)]
        victims = []
        for i in todo:
            victims.append({
                "victim_id": ids[i], "images": batch["images"][i].to(self.device, dtype),
                "labels": batch["labels"][i].to(self.device), "indices": batch["indices"][i].tolist(),
                "record": self._empty_record(ids[i], batch["indices"][i].tolist()),
                "start": time.perf_counter(),
            })  # fmt: skip
        self._defend(victims)
        if self.mode in ("both", "estimate"):
            self._estimate([v for v in victims if v["record"]["status"] == "ok"])
        if self.mode in ("both", "attack"):
            self._attack([v for v in victims if v["record"]["status"] == "ok"])
        records = []
        for v in victims:
            rec = v["record"]
            rec["seconds"]["total"] = time.perf_counter() - v["start"]
            rec["peak_memory_mb"] = _peak_memory_mb(self.device)
            records.append(rec)
            self._log(rec)
        return records

    # ------------------------------------------------------------------------------------------- stages
    def _empty_record(self, victim_id: int, indices: list[int]) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "trial_id": self.config.trial_id, "victim_id": victim_id,
            "indices": indices, "protocol": dict(getattr(self.dm, "protocol", {})), "config": self.config.to_dict(),
            "mode": self.mode, "status": "ok", "reason": None, "i2f": None, "attack": None, "metrics": None,
            "utility": None, "defense": None,
            "seconds": {"defense": 0.0, "i2f": 0.0, "attack": 0.0, "metrics": 0.0, "total": 0.0},
            "peak_memory_mb": None,
            "provenance": {**provenance(self.device, self.config.dtype), "seeds": {
                "trial": self.config.seed, "init": self.config.init_seed,
                "victims": int(self.config.dataset_params.get("seed", 0)),
            }},
        }  # fmt: skip

    @staticmethod
    def _fail(victim: dict[str, Any], stage: str, exc: BaseException) -> None:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, DglbenchError):  # e.g. "ZeroDivisionError: division by zero"
            text = f"{type(exc).__name__}: {text}"
        victim["record"]["status"] = "failed"
        victim["record"]["reason"] = f"{stage}: {text}"

    def _defend(self, victims: list[dict[str, Any]]) -> None:
        from dglbench.defenses import defense_name, describe_defense, run_defense

        assert self.victim_model is not None
        for v in victims:
            start = time.perf_counter()
            try:
                gen = _victim_generator(self.config.seed, v["victim_id"], self.device, "defense")
                ctx = DefenseContext(self.victim_model, v["images"], v["labels"], self.config.case_obj, gen)
                out = run_defense(self.defense, ctx)
                if not bool(torch.isfinite(out.clean).all()):
                    raise DglbenchError("the clean gradient has NaN or inf values")
                v["clean"], v["defended"] = out.clean, out.defended
                cos = torch.nn.functional.cosine_similarity(out.clean, out.defended, dim=0)
                v["record"]["utility"] = {"gradient_cosine": float(cos)}
                v["record"]["defense"] = _jsonable(describe_defense(self.defense))
            except DglbenchError as exc:
                self._fail(v, "defense", exc)
            except Exception as exc:  # third-party defenses may raise anything: one victim fails, the rest go on
                self._fail(v, "defense", exc)
                v["record"]["reason"] += f" (defense {defense_name(self.defense)!r})"
            v["record"]["seconds"]["defense"] = time.perf_counter() - start

    def _estimate(self, victims: list[dict[str, Any]]) -> None:
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
                    self._fail(v, "i2f", exc)
        share = (time.perf_counter() - start) / len(victims)
        for v in victims:
            v["record"]["seconds"]["i2f"] = share

    def _estimate_group(self, victims: list[dict[str, Any]]) -> None:
        assert self.victim_model is not None
        cfg, loss = self.config, self.config.case_obj.loss_fn()
        xs, ys = [v["images"] for v in victims], [v["labels"] for v in victims]
        deltas = [v["defended"] - v["clean"] for v in victims]
        est = estimate_i2f(
            self.victim_model, xs, ys, deltas, loss, eps=cfg.eps, lower_bound_tol=cfg.lower_bound_tol,
            cg_tol=cfg.cg_tol, cg_max_iter=cfg.cg_max_iter, seed=cfg.seed,
        )  # fmt: skip
        lb, exact = est.lower_bound, est.exact
        for i, v in enumerate(victims):
            values = torch.stack([lb.value[i], lb.max_eigenvalue[i], *(r.value[i] for r in exact.values())])
            if not bool(torch.isfinite(values).all()):
                self._fail(v, "i2f", DglbenchError(
                    "non-finite I2F value: the K products overflowed (untrained logits too large?); "
                    "try dtype: float64 or another initialization"
                ))  # fmt: skip
            v["record"]["i2f"] = {
                "lower_bound": float(lb.value[i]), "jt_delta": float(lb.jt_delta[i]),
                "max_eigenvalue": float(lb.max_eigenvalue[i]), "lower_bound_converged": bool(lb.converged[i]),
                "exact": {_eps_key(e): float(r.value[i]) for e, r in exact.items()},
                "exact_converged": {_eps_key(e): bool(r.converged[i]) for e, r in exact.items()},
                "exact_residual": {_eps_key(e): float(r.residual[i]) for e, r in exact.items()},
                "products": int(est.products[i]),
            }  # fmt: skip
            v["record"]["i2f"] = _jsonable(v["record"]["i2f"])  # NaN/inf -> null: JSON has no NaN

    def _attack(self, victims: list[dict[str, Any]]) -> None:
        from dglbench.metrics import reconstruction_metrics

        if not victims or self.attack is None:
            return
        assert self.victim_model is not None
        case = self.config.case_obj
        payloads = [make_payload(case, v["defended"], v["labels"]) for v in victims]
        gens = [_victim_generator(self.config.seed, v["victim_id"], self.device, "attack") for v in victims]
        start = time.perf_counter()
        try:
            results = self.attack.run_many(
                self.victim_model, payloads, self.dm.image_shape, box=self.box, generator=gens
            )
        except (DglbenchError, RuntimeError, ValueError) as exc:
            for v in victims:
                self._fail(v, "attack", exc)
            return
        share = (time.perf_counter() - start) / len(victims)
        for v, res in zip(victims, results):
            rec = v["record"]
            rec["seconds"]["attack"] = share
            rec["attack"] = {
                "name": self.config.attack, "iterations": res.iterations, "restarts": res.restarts,
                "final_loss": _finite_or_none(res.final_loss), "seconds": res.seconds,
                "label_source": res.label_source, "status": res.status, "reason": res.reason,
            }  # fmt: skip
            if res.status != "ok":
                rec["status"], rec["reason"] = "failed", f"attack: {res.reason}"
                continue
            t0 = time.perf_counter()
            try:
                gen = _victim_generator(self.config.seed, v["victim_id"], self.device, "metrics")
                metrics = reconstruction_metrics(
                    res.images, v["images"], denormalize=self.dm.denormalize, normalize=self.dm.normalize,
                    mean_image=self.mean_image,
                    lpips=self.lpips, generator=gen, labels_hat=res.labels, labels=v["labels"],
                )  # fmt: skip
                rec["metrics"] = _jsonable(metrics.to_dict())
            except (DglbenchError, RuntimeError, ValueError) as exc:
                self._fail(v, "metrics", exc)
            rec["seconds"]["metrics"] = time.perf_counter() - t0

    def _log(self, record: dict[str, Any]) -> None:
        """Scalars to the loggers as each victim finishes (one device; under DDP the runner logs after merging)."""
        if self._trainer is None or not self.trainer.loggers or self.trainer.world_size > 1:
            return  # Lightning's loggers write on rank 0 only: the other ranks' victims would be lost
        log_record(self.trainer.loggers, record)

    def configure_optimizers(self) -> None:  # the benchmark never trains the victim model
        return None


def log_record(loggers: Sequence[Any], record: dict[str, Any]) -> None:
    """A record's scalars to Lightning loggers (CSV by default, W&B when configured); step = victim id."""
    flat: dict[str, float] = {"status_ok": float(record["status"] == "ok")}
    for section in ("i2f", "metrics", "utility"):
        for key, value in (record.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{section}/{key}"] = float(value)
    for logger in loggers:
        logger.log_metrics(flat, step=record["victim_id"])


def _eps_key(eps: float) -> str:
    return repr(float(eps))


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or x != x or x in (float("inf"), float("-inf")) else float(x)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return _finite_or_none(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


class RecordWriter(BasePredictionWriter):
    """Writes each finished victim's record to ``<dir>/victim-<id>.json`` (atomic), on the rank that owns it."""

    def __init__(self, directory: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.directory = Path(directory)

    def write_records(self, trainer: pl.Trainer, records: list[dict[str, Any]]) -> None:
        from dglbench.datamodules.base import owned_by_rank

        for rec in records:
            if bool(owned_by_rank(rec["victim_id"], trainer.global_rank, trainer.world_size)):
                atomic_write_json(self.directory / f"victim-{rec['victim_id']:06d}.json", _jsonable(rec))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.write_records(trainer, prediction or [])
