"""One sweep per folder, one process at a time.

- :class:`FolderLock`: ``<folder>/sweep.lock`` holds the pid and host of the sweep running there. A second
  ``sweep run`` into the same folder stops with one line naming that pid; a lock whose process is gone
  (killed, machine rebooted) is taken over.
- :func:`check_same_spec`: a folder that already holds a sweep takes only the same spec again (resume);
  a different one is refused unless forced, so two sweeps' metadata and records never mix by accident.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with FolderLock(folder):
    ...     pass
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml
from dglbench.errors import ConfigError

__all__ = ["FolderLock", "check_same_spec"]

LOCK_NAME = "sweep.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class FolderLock:
    """An exclusive lock on a sweep folder for one process (see the module docstring).

    Args:
        folder: the sweep folder (created if missing).
        name: the lock file's name in it.
        what / holder: how the refusal names the folder and the process that holds it.
    """

    def __init__(
        self,
        folder: str | Path,
        name: str = LOCK_NAME,
        what: str = "sweep folder",
        holder: str = "a sweep is running there",
    ) -> None:
        self.path = Path(folder) / name
        self.held = False
        self.what, self.holder = what, holder

    def _holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return float("inf")

    def acquire(self) -> None:
        """Take the lock, on DDP rank 0 only: the other ranks are the holder's own helpers."""
        from dglbench.hardware import is_global_zero

        if not is_global_zero():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                pid, host = holder.get("pid"), holder.get("host")
                if isinstance(pid, int) and (host != me["host"] or _alive(pid)):
                    where = "" if host == me["host"] else f" on {host}"
                    raise ConfigError(
                        f"{self.what} {self.path.parent} is locked by pid {pid}{where} ({self.holder}); "
                        f"wait for it to finish, or delete {self.path} if that process is gone"
                    ) from None
                if pid is None and self._age() < 10:  # just created, its holder is writing its pid now
                    raise ConfigError(
                        f"{self.what} {self.path.parent} is being locked by another process; try again in a moment"
                    ) from None
                self.path.unlink(missing_ok=True)  # a stale lock (its process is gone): take it over
                continue
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                    raise ConfigError(f"cannot write in {self.what} {self.path.parent}: {exc.strerror}") from None
                raise
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return
        raise ConfigError(f"could not take the lock {self.path}; another process keeps taking it, try again")

    def release(self) -> None:
        if self.held:
            if self._holder().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_same_spec(spec_file: Path, source: dict[str, Any], force: bool) -> None:
    """Refuse a spec that differs from the one ``spec_file`` (the folder's ``spec.yaml``) holds, unless ``force``.

    Args:
        spec_file: the sweep folder's copy of its spec (absent: a new folder, nothing to compare).
        source: the spec being run, as parsed.
        force: accept a different spec (the folder's spec.yaml and sweep.json are then replaced).
    """
    if force or not spec_file.exists():
        return
    try:
        stored = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        stored = None
    if stored == source:
        return
    name = stored.get("name") if isinstance(stored, dict) else None
    held = f"sweep {name!r}" if name else "another sweep"
    raise ConfigError(
        f"{spec_file.parent} already holds {held} with a different spec ({spec_file}); use a new --out folder, "
        "or pass --force to run this spec there too (its records are added to the same report)"
    )
