"""Atomic file writes: a reader never sees a half-written file, a killed writer leaves no partial file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a" / "b.txt"
        >>> atomic_write_text(p, "hi").read_text()
        'hi'
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Binary twin of :func:`atomic_write_text` (plots, PDFs)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as pretty, key-sorted JSON, atomically (NaN is refused: JSON has no NaN)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def replace_between_markers(text: str, name: str, body: str) -> str:
    """Replace (or append) the block between ``<!-- name:begin -->`` and ``<!-- name:end -->``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    return text.rstrip() + "\n\n" + block + "\n"


def load_yaml_mapping(path: str | os.PathLike[str], what: str, *, allow_empty: bool = False) -> dict[str, Any]:
    """A YAML file that must hold a mapping; a missing, malformed or wrong-shaped file is one ConfigError line.

    Args:
        path: the file.
        what: what the file is, for messages ("config", "sweep spec", "track").
        allow_empty: an empty file is ``{}`` instead of an error.
    """
    import yaml
    from dglbench.errors import ConfigError
    from dglbench.params import YamlLoader

    try:  # YAML 1.2 numbers: `cg_tol: 1e-4` is a number (PyYAML's safe loader reads it as a string)
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=YamlLoader)  # noqa: S506 (a safe loader)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 YAML"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        if allow_empty:
            return {}
        raise ConfigError(f"{what} {path} is empty; write its keys in it (YAML), or leave the file out")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping, got {type(data).__name__}")
    return data


def check_output_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Refuse an output folder that cannot be one, before anything is written; creates nothing.

    The folder must be a directory, or not exist yet under a writable directory (it is created when the
    first result is written). A file, ``/dev/null`` or a read-only parent is one :class:`ConfigError` line.

    Example:
        >>> import tempfile
        >>> check_output_dir(tempfile.mkdtemp()).is_dir()
        True
    """
    from dglbench.errors import ConfigError

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{what} {path} is not a folder (it is a file or device); choose a folder for the results")
    parent = target
    while not parent.exists():  # the nearest existing ancestor is where the folder will be created
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {path}: {parent} is a file, so no folder can be created there; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {parent} is not writable; choose a folder you can write to")
    return target
