"""Checks that run before work starts, and checks of stored records before they are trusted.

- :func:`check_model_accepts`: one forward pass of the trial's model on the victims' input shape, so a
  model built for another input size fails once, by name, instead of failing every victim later.
- :func:`validate_record_file` / :func:`is_valid_record`: a trial file (``records/<trial>.json``) or a
  victim part file (``parts/<trial>/victim-<id>.json``) that can be read back — valid JSON, the right
  shape, each victim a readable :class:`~dglbench.record.VictimRecord`, numbers stored as numbers. A file
  that is not is never counted as done: :func:`set_aside_invalid` moves it aside (``*.invalid``) with a
  warning line, and its work is re-run.

Example:
    >>> import json, pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.json"
    >>> _ = p.write_text("{}")
    >>> is_valid_record(p)
    False
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from dglbench.errors import ConfigError, DglbenchError

__all__ = ["check_model_accepts", "is_valid_record", "record_problem", "set_aside_invalid", "validate_record_file"]

# Parts of a victim record (schema 1 and 2) whose leaves are numbers (or null / true / false), never text.
_NUMERIC_PARTS = ("i2f", "estimate", "metrics", "seconds", "timings")
_NUMERIC_IN_ATTACK = ("final_loss", "seconds", "iterations", "restarts")
_TEXT_KEYS = {"unavailable", "source", "reason", "label_source", "assignment_method"}


def check_model_accepts(config: Any, num_classes: int, image_shape: tuple[int, ...]) -> None:
    """Run the trial's model once on two zero images of ``image_shape``; a failure is one :class:`ConfigError`.

    Args:
        config: the trial (:class:`~dglbench.trial.TrialConfig`).
        num_classes / image_shape: the dataset's, as the victims will have them (``(C, H, W)``).
    """
    from dglbench.modules import build_victim_model

    model = build_victim_model(config, num_classes, image_shape)
    param = next(model.parameters(), None)
    probe = torch.zeros(2, *image_shape, dtype=param.dtype if param is not None else torch.float32)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()  # BatchNorm in train mode is not what is being checked
            model(probe)
    except Exception as exc:  # whatever the model raises, the input does not fit it
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160].rstrip(".")
        native = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or ())
        fix = (
            f"set dataset_params.image_size={native[-1]} (the model's input is {native[-2]}x{native[-1]})"
            if len(native) == 3 and tuple(native[1:]) != tuple(image_shape[1:])
            else "choose a model for these images"
        )
        raise ConfigError(
            f"model {config.model!r} does not accept inputs of shape {tuple(image_shape)} "
            f"(from dataset {config.dataset!r}): {reason}; {fix}, or pass model_params.img_size={image_shape[-1]} "
            "if the model takes it"
        ) from None
    finally:
        model.train(was_training)


def _check_numbers(value: Any, where: str, key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in _TEXT_KEYS:
                _check_numbers(v, f"{where}.{k}", k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, f"{where}[{i}]", key)
    elif isinstance(value, str):
        raise DglbenchError(f"{where} is text ({value!r}) where a number belongs")
    elif isinstance(value, float) and not math.isfinite(value):
        raise DglbenchError(f"{where} is {value!r}; records store a missing number as null")


def _check_victim(rec: Any, where: str) -> None:
    """A victim record as every reader needs it; a bad one is a :class:`DglbenchError` naming the field."""
    from dglbench.record import VictimRecord

    if not isinstance(rec, dict):
        raise DglbenchError(f"{where} is a {type(rec).__name__}, not a victim record (a mapping)")
    for key, kind in (("victim_id", int), ("status", str), ("config", dict)):
        value = rec.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DglbenchError(f"{where} has no valid {key!r} ({kind.__name__} expected, got {value!r})")
    for part in _NUMERIC_PARTS:
        _check_numbers(rec.get(part), f"{where}.{part}")
    attacks = rec.get("attack")
    for i, attack in enumerate(rec.get("attacks") or ([attacks] if isinstance(attacks, dict) else [])):
        if isinstance(attack, dict):
            for key in _NUMERIC_IN_ATTACK:
                _check_numbers(attack.get(key), f"{where}.attacks[{i}].{key}")
            _check_numbers(attack.get("metrics"), f"{where}.attacks[{i}].metrics")
    worst = rec.get("worst")
    if isinstance(worst, dict):
        _check_numbers(worst.get("metrics"), f"{where}.worst.metrics")
    try:
        VictimRecord.from_dict(rec)
    except (DglbenchError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise DglbenchError(f"{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def record_problem(path: str | Path) -> str | None:
    """What is wrong with a trial file or victim part file, in words, or ``None`` when it can be read back."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"it is not valid JSON ({str(exc).splitlines()[0]}): cut short or edited"
    try:
        if path.name.startswith("victim-"):
            _check_victim(data, "the record")
        elif not isinstance(data, dict) or not isinstance(data.get("victims"), list) or not data["victims"]:
            got = type(data).__name__ if not isinstance(data, dict) else f"keys {sorted(data)}"
            return f"it is not a trial record (a mapping with a 'victims' list; got {got})"
        else:
            for i, rec in enumerate(data["victims"]):
                _check_victim(rec, f"victims[{i}]")
    except DglbenchError as exc:
        return str(exc)
    return None


def validate_record_file(path: str | Path) -> None:
    """Check a trial file or a victim part file; any problem is one :class:`DglbenchError` naming the file."""
    problem = record_problem(path)
    if problem is not None:
        raise DglbenchError(f"record {path}: {problem}; delete it and re-run to redo that work")


def is_valid_record(path: str | Path) -> bool:
    """Whether ``path`` exists and passes :func:`validate_record_file` (only such a file counts as done)."""
    return Path(path).is_file() and record_problem(path) is None


def set_aside_invalid(path: str | Path) -> Path | None:
    """Move an existing but invalid record to ``<name>.invalid`` with a warning line, so its work is re-run.

    Nothing is deleted: the file can be inspected, and moved back if it was right after all.

    Returns:
        Where it went, or ``None`` when ``path`` is absent or valid.
    """
    path = Path(path)
    problem = record_problem(path) if path.exists() else None
    if problem is None:
        return None
    aside = path.with_name(path.name + ".invalid")
    os.replace(path, aside)
    print(f"dglbench: warning: {path} is not a valid record: {problem}; moved to {aside.name}, re-running it",
          file=sys.stderr)  # fmt: skip
    return aside
