"""``dglbench leaderboard submit``: measure one defense configuration on a track and write its entry.

Runs every attack of the track's suite on every victim (:func:`dglbench.runner.run_trial`), the
FedSGD utility protocol with and without the defense, summarizes, and writes the victims file and
then the entry file, each atomically. Interrupted runs resume: trial records are kept under
``runs/leaderboard/<track>/<defense>-<hash>/`` and finished trials are not re-run.

Example (a CPU track on embedded photographs, 20 minutes to 1.7 hours on two cores)::

    dglbench leaderboard submit --track natural-convnet5@2 --defense gaussian --param sigma=0.01
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dglbench.hardware import device_name, global_rank, one_cpu_thread, torch_device
from dglbench.io import atomic_write_json
from dglbench.leaderboard.aggregate import (
    accuracy_drop,
    by_trial,
    gradient_cosine,
    i2f_summary,
    privacy_summaries,
    suite_summaries,
    suite_worst_case,
)
from dglbench.leaderboard.schema import (
    SCHEMA_VERSION,
    DefenseInfo,
    Entry,
    FedSGDResult,
    Hardware,
    Provenance,
    Seconds,
    Seeds,
    UtilitySummary,
    VictimsFile,
    entry_digest,
    entry_slug,
)
from dglbench.leaderboard.store import entry_paths
from dglbench.leaderboard.track import Track, load_track
from dglbench.leaderboard.typed import to_dict
from dglbench.leaderboard.utility import shared_fedsgd_accuracy, undefended_accuracy
from dglbench.record import VictimRecord
from dglbench.sweep.guard import FolderLock

__all__ = ["Submission", "build_entry", "code_hash", "defense_info", "process_rank", "reused_seconds", "submit"]


def reused_seconds(records: list[VictimRecord], started: datetime) -> float:
    """Seconds that earlier runs spent on the ``records`` this run reused (written before ``started``).

    An entry resumed across runs (``--work-dir``) would otherwise report only its last run's wall time. Each
    record holds the wall time of the step it ran in and that step's victim count (:class:`~dglbench.record.
    Timings`), so its share is ``total / step_victims``; a record without them counts its ``total``.
    """
    seconds = 0.0
    for r in records:
        written = r.provenance.get("time")
        if written is None or datetime.fromisoformat(written) >= started:
            continue
        seconds += r.timings.total / (r.timings.step_victims or 1)
    return seconds


@dataclass(frozen=True)
class Submission:
    """What :func:`submit` wrote."""

    entry: Entry | None
    entry_path: Path
    victims_path: Path
    skipped: bool = False


def _source(spec: str) -> tuple[str, str | None, str | None]:
    """(source kind, distribution, version) of a defense spec."""
    from dglbench.defenses import DEFENSES, ENTRY_POINT_GROUP

    if spec in DEFENSES:
        return "builtin", None, None
    if ":" in spec:
        top = spec.split(":", 1)[0].split(".", 1)[0]
        dists = importlib.metadata.packages_distributions().get(top, [])
        if dists:
            return "module", dists[0], importlib.metadata.version(dists[0])
        return "module", None, None
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            dist = getattr(ep, "dist", None)
            return "entry_point", getattr(dist, "name", None), getattr(dist, "version", None)
    return "entry_point", None, None


def code_hash(defense: Any) -> str:
    """12 hex digits of SHA-256 over the source file that defines ``defense``'s class (its code, as installed)."""
    import hashlib
    import inspect

    try:
        source = Path(inspect.getsourcefile(type(defense)) or "").read_bytes()
    except (OSError, TypeError):
        source = repr(type(defense)).encode()  # no source on disk (a class built at run time)
    return hashlib.sha256(source).hexdigest()[:12]


def defense_info(
    spec: str, params: dict[str, Any], *, reference: str | None = None, description: str | None = None,
    track: Track | None = None,
) -> DefenseInfo:  # fmt: skip
    """Build the defense (checking its parameters) and describe it, where it comes from and a hash of its code.

    On a protocol-2 ``track`` a privacy accountant's ``steps`` and ``sample_rate`` come from the track's FedSGD
    run (:func:`dglbench.leaderboard.protocol.accounting_params`).
    """
    from dglbench.defenses import create_defense, describe_defense
    from dglbench.leaderboard.protocol import accounting_params

    defense = create_defense(spec, **params)
    if track is not None and track.protocol == 2:
        defense = create_defense(spec, **accounting_params(track, type(defense), params))
    described = json.loads(json.dumps(describe_defense(defense), default=str))
    source, package, version = _source(spec)
    return DefenseInfo(
        name=described["name"], spec=spec, params=described["params"], source=source, package=package,
        package_version=version, reference=reference, description=description, formal_privacy=described["privacy"],
        code_hash=code_hash(defense),
    )  # fmt: skip


def _device_name(accelerator: str, devices: int) -> str:
    """The accelerator's model name (GPU name, or the CPU's model from /proc/cpuinfo) and count."""
    device = torch_device(accelerator)
    return f"{devices} x {device_name(device)}" if device.type == "cuda" else f"cpu: {device_name(device)}"


def process_rank() -> int:
    """This process's global rank under Lightning's DDP launcher (0 when not distributed)."""
    return global_rank()


def build_entry(
    track: Track, info: DefenseInfo, records: list[VictimRecord | dict[str, Any]], trial_ids: list[str], *,
    test_accuracy: float, undefended: float, test_images: int, hardware: Hardware, seconds: Seconds,
) -> Entry:  # fmt: skip
    """Summarize per-victim records into an entry (the computation ``validate`` repeats)."""
    from dglbench import __version__

    num_victims = track.num_victims
    groups = by_trial(records, trial_ids, num_victims)
    digest = entry_digest(track.ref, info)
    prov = next((r.provenance for recs in groups.values() for r in recs if r.provenance), {})
    u = track.utility
    return Entry(
        schema_version=SCHEMA_VERSION,
        entry_id=f"{track.ref}/{entry_slug(info.name)}-{digest}",
        track=track.ref,
        defense=info,
        privacy=(
            suite_summaries(track, trial_ids[0], groups[trial_ids[0]])
            if track.protocol == 2
            else privacy_summaries(track, trial_ids, groups)
        ),
        i2f=i2f_summary(trial_ids[0], groups[trial_ids[0]]) if track.estimate is not None else None,
        utility=UtilitySummary(
            gradient_cosine=gradient_cosine(groups[trial_ids[0]]),
            fedsgd=FedSGDResult(
                rounds=u.rounds,
                clients=u.clients,
                batch_size=u.batch_size,
                lr=u.lr,
                seed=u.seed,
                test_images=test_images,
                test_accuracy=test_accuracy,
                undefended_test_accuracy=undefended,
                accuracy_drop=accuracy_drop(undefended, test_accuracy),
            ),
        ),  # fmt: skip
        provenance=Provenance(
            dglbench=str(prov.get("dglbench", __version__)),
            git_commit=prov.get("git_commit"),
            track=track.ref,
            track_hash=track.content_hash,
            config_hash=digest,
            trial_ids=list(trial_ids),
            python=str(prov.get("python", platform.python_version())),
            torch=str(prov.get("torch", "")),
            timm=str(prov.get("timm", "")),
            lightning=str(prov.get("lightning", "")),
            platform=platform.platform(),
            hardware=hardware,
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            seeds=Seeds(
                victims=int(track.data.params.get("seed", 0)),
                init=track.model.init_seed,
                trial=track.seed,
                utility=u.seed,
            ),
            seconds=seconds,
        ),  # fmt: skip
        worst_case=suite_worst_case(track, groups[trial_ids[0]]) if track.protocol == 2 else None,
    )


def submit(
    track: str | Track,
    defense: str,
    params: dict[str, Any] | None = None,
    *,
    devices: int = 1,
    accelerator: str = "cpu",
    root: str | Path | None = None,
    work_dir: str | Path = "runs/leaderboard",
    reference: str | None = None,
    description: str | None = None,
    progress: bool = False,
    data_root: str | None = None,
    skip_existing: bool = False,
) -> Submission | None:
    """Measure ``defense(**params)`` on ``track`` and write its entry and victims file.

    Args:
        track: a track id (``digits-convnet5``), ``id@version``, YAML path, or :class:`Track`.
        defense: a registered defense, ``package.module:Class`` path or entry point.
        params: the defense's parameters.
        devices / accelerator: Lightning devices for the privacy trials (victims shard across them).
        root: the leaderboard data folder (default ``leaderboards/``).
        work_dir: where trial records are kept so that an interrupted submission resumes.
        reference / description: URL or DOI, and one line, stored with the defense.
        progress: show Lightning's progress bar; without it, a plain line every 30 s or so on stderr says how
            far the privacy trial and the utility run are, for logs of background runs.
        data_root: where the dataset's files are (not needed for embedded datasets).
        skip_existing: return at once (``skipped=True``) when the entry file exists.

    The trial records are kept under ``work_dir/<track>/<defense>-<config hash>``; the hash covers the
    defense's package, version and code, so a changed defense starts afresh instead of reusing them.

    Returns:
        The :class:`Submission` on the main process; ``None`` on the other DDP ranks.
    """
    from dglbench.runner import run_trial

    start = time.perf_counter()
    started = datetime.now(timezone.utc).replace(microsecond=0)  # records written before this were reused
    track = track if isinstance(track, Track) else load_track(track, root)
    info = defense_info(defense, dict(params or {}), reference=reference, description=description, track=track)
    digest = entry_digest(track.ref, info)
    entry_path, victims_path = entry_paths(track.ref, info.name, digest, root)
    if skip_existing and entry_path.exists():
        return Submission(None, entry_path, victims_path, skipped=True)
    if process_rank() == 0:  # say where the entry will go before anything runs
        print(f"leaderboard root {entry_path.parents[3]} (DGLBENCH_LEADERBOARDS or --root); entry {entry_path.name}",
              flush=True)  # fmt: skip
        if track.superseded:
            print(f"note: {track.ref} follows protocol 1, superseded by protocol 2 (leaderboards/README.md, 'From v1 "
                  f"to v2'); its board is kept for comparison, and new defenses go on the v2 tracks: dglbench "
                  f"leaderboard tracks", flush=True)  # fmt: skip
    out_dir = Path(work_dir) / track.id / f"{entry_slug(info.name)}-{digest}"
    # two submissions of one entry (two baseline processes, a second terminal) would race on its records
    with FolderLock(out_dir, name="submit.lock", what="entry work folder", holder=f"submitting {entry_path.name}"):
        if skip_existing and entry_path.exists():  # it landed between the check above and the lock
            return Submission(None, entry_path, victims_path, skipped=True)
        configs = track.trial_configs(defense, info.params, data_root)
        records: list[VictimRecord] = []
        with one_cpu_thread(torch_device(accelerator)):  # numbers independent of OMP_NUM_THREADS
            for config in configs:
                records += run_trial(
                    config, devices=devices, accelerator=accelerator, output_dir=out_dir, progress=progress,
                    log_progress=not progress,
                )  # fmt: skip
        if process_rank() != 0:
            return None
        privacy_seconds = time.perf_counter() - start + reused_seconds(records, started)
        device = torch_device(accelerator).type
        defended, computed_on = shared_fedsgd_accuracy(
            track, info, work_dir, device=device, data_root=data_root, log=True
        )
        if computed_on is not None:
            print(
                f"utility of {info.name} on {track.ref}: {defended.test_accuracy:.2f}% from the FedSGD run made for "
                f"{computed_on} (same data, model, initialization, case, protocol and defense)",
                flush=True,
            )
        undefended = undefended_accuracy(track, device=device, root=root, data_root=data_root)
        # each run's own count (0 for a cached undefended run): a defended run resumed from its checkpoint
        # includes the earlier sessions' seconds, which this call's wall time would leave out
        utility_seconds = defended.seconds + undefended.seconds
        entry = build_entry(
            track, info, records, [c.trial_id for c in configs],
            test_accuracy=defended.test_accuracy, undefended=undefended.test_accuracy, test_images=defended.test_images,
            hardware=Hardware(accelerator, devices, _device_name(accelerator, devices), os.cpu_count()),
            seconds=Seconds(privacy=round(privacy_seconds, 2), utility=round(utility_seconds, 2),
                            total=round(privacy_seconds + utility_seconds, 2)),
        )  # fmt: skip
        stored = [r.to_dict() for r in records]  # the records' own schema version is in each record
        atomic_write_json(victims_path, to_dict(VictimsFile(SCHEMA_VERSION, entry.entry_id, stored)))
        atomic_write_json(entry_path, to_dict(entry))
        if track.protocol == 2:  # the page shows the worst-case reconstructions of the first victims
            from dglbench.layout import RunLayout
            from dglbench.leaderboard.strip import strip_path, write_strip

            write_strip(
                RunLayout(out_dir).images(configs[0].trial_id).directory, track.num_victims, strip_path(entry_path)
            )
        return Submission(entry, entry_path, victims_path)
