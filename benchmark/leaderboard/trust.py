"""Which code an entry's defense names, and whether running it needs the user's consent.

An entry is data from someone else. ``validate``, ``verify`` and ``render`` read it without importing
anything it names: the decision below looks only at dglbench's own registry and at the installed
distributions' metadata (``importlib.metadata``), which lists entry points without loading them.

* **built-in** — the spec is a name registered in :data:`dglbench.defenses.DEFENSES`: dglbench's own
  code, always allowed.
* **entry point** — the spec is the name of an entry point in group ``dglbench.defenses`` of an
  installed distribution, and the entry names that distribution and version. Running it imports
  third-party code: ``verify`` needs ``--trust-code``.
* **module path** — ``package.module:Class``: importing a module named by data. ``verify`` refuses it
  without ``--trust-code``; ``validate`` reports it as untrusted (a note, not an error).

Example:
    >>> from dglbench.leaderboard.schema import DefenseInfo
    >>> d = DefenseInfo("os:system", "os:system", {"command": "true"}, "module", None, None, None, None, None)
    >>> source = code_source(d)
    >>> source.kind, source.trusted
    ('module', False)
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Literal

from dglbench.errors import DglbenchError
from dglbench.leaderboard.schema import DefenseInfo

__all__ = ["CodeSource", "UntrustedCodeError", "code_source", "require_trust"]


class UntrustedCodeError(DglbenchError, PermissionError):
    """Running an entry would import third-party code, and the user has not allowed it."""


@dataclass(frozen=True)
class CodeSource:
    """Where the code of an entry's defense would come from (found without importing it).

    Attributes:
        kind: ``builtin``, ``entry_point`` (installed, group ``dglbench.defenses``), ``module`` (a
            ``package.module:Class`` path) or ``unknown`` (none of these is installed).
        spec: the entry's ``defense.spec``.
        distribution / version: the installed distribution that provides it (``None`` when unknown).
        target: what would be imported: the entry point's ``module:attr`` or the module path.
        problem: why the entry's own description of its source does not match what is installed, else ``""``.
    """

    kind: Literal["builtin", "entry_point", "module", "unknown"]
    spec: str
    distribution: str | None
    version: str | None
    target: str | None
    problem: str

    @property
    def trusted(self) -> bool:
        """Whether running it needs no consent (dglbench's own built-in defenses)."""
        return self.kind == "builtin"

    def describe(self) -> str:
        """One phrase naming what would be imported, e.g. ``entry point 'clip' -> mypkg.d:Clip (mypkg 1.0)``."""
        package = f"{self.distribution} {self.version}" if self.distribution else "no installed distribution found"
        if self.kind == "builtin":
            return f"built-in defense {self.spec!r}"
        if self.kind == "entry_point":
            return f"entry point {self.spec!r} -> {self.target} ({package})"
        if self.kind == "module":
            return f"module path {self.spec!r}: imports module {self.target!r} ({package})"
        return f"defense {self.spec!r}: neither built in nor an installed entry point of group 'dglbench.defenses'"


def _entry_point(name: str) -> importlib.metadata.EntryPoint | None:
    from dglbench.defenses import ENTRY_POINT_GROUP

    return next((ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name), None)


def code_source(defense: DefenseInfo) -> CodeSource:
    """Where ``defense.spec`` would be loaded from; looks at the registry and metadata only, imports nothing."""
    from dglbench.defenses import DEFENSES

    spec = defense.spec
    if spec in DEFENSES:
        problem = "" if defense.source == "builtin" else f"defense.source is {defense.source!r}, but it is built in"
        return CodeSource("builtin", spec, None, None, None, problem)
    ep = _entry_point(spec)
    if ep is not None:
        dist = getattr(ep, "dist", None)
        name, version = getattr(dist, "name", None), getattr(dist, "version", None)
        claimed = (defense.source, defense.package, defense.package_version)
        problem = ""
        if claimed != ("entry_point", name, version):
            problem = (
                f"the entry names {claimed[1]} {claimed[2]} ({claimed[0]}), but the installed entry point comes "
                f"from {name} {version}"
            )
        return CodeSource("entry_point", spec, name, version, ep.value, problem)
    if ":" in spec:
        module = spec.split(":", 1)[0]
        dists = importlib.metadata.packages_distributions().get(module.split(".", 1)[0], [])
        name = dists[0] if dists else None
        version = importlib.metadata.version(name) if name else None
        problem = "a module path, not a built-in defense or an installed entry point: untrusted code"
        return CodeSource("module", spec, name, version, module, problem)
    return CodeSource("unknown", spec, None, None, None, "not built in and no installed entry point provides it")


def require_trust(defense: DefenseInfo, trust_code: bool) -> CodeSource:
    """The defense's :class:`CodeSource`, if it may run: built in, or allowed by ``trust_code``.

    Raises:
        UntrustedCodeError: third-party code without ``trust_code``, a source that is not installed, or an
            entry point whose installed distribution or version is not the entry's.
    """
    source = code_source(defense)
    if source.kind == "unknown":
        raise UntrustedCodeError(f"{source.describe()}; install the package that provides it")
    if source.kind == "entry_point" and source.problem:  # another version would re-run other code
        raise UntrustedCodeError(
            f"{source.describe()}: {source.problem}; install {defense.package}=={defense.package_version} to verify"
        )
    if not source.trusted and not trust_code:
        raise UntrustedCodeError(
            f"re-running this entry would import third-party code: {source.describe()}; "
            "read that code, then allow it with --trust-code"
        )
    return source
