"""Plain-text progress for long work whose output goes to a file, where a progress bar cannot draw.

A leaderboard submission runs for an hour or more, usually in the background with its output in a log
(``nohup ... > log``). :class:`Pace` prints one line at most every ``every`` seconds: how many steps are done,
the time spent, and the time left at the pace of the last ``window`` steps (steps that resume from stored
records take no time: those under 5 % of the longest recent step are left out of the pace).
:class:`TextProgress` does this for the victim steps of a Lightning prediction loop on the main process.

Example:
    >>> import io
    >>> clock = iter([0.0, 40.0, 80.0]).__next__
    >>> out = io.StringIO()
    >>> pace = Pace("trial 1a2b", total=4, every=30.0, stream=out, clock=clock)
    >>> pace.step()
    'trial 1a2b: 1/4 steps, 40 s, about 2 min left'
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

import lightning.pytorch as pl

__all__ = ["Pace", "TextProgress", "duration"]


def duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``2.3 h``: a duration for a person to read.

    Example:
        >>> duration(42.4), duration(415), duration(8280)
        ('42 s', '7 min', '2.3 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Pace:
    """Counts ``total`` steps and prints a line on ``stream`` (stderr) at most every ``every`` seconds and at
    the last step: ``"<label>: k/total steps, <elapsed>, about <left> left"``, where ``left`` is the steps
    still to do times the mean duration of the last ``window`` steps."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "steps",
        every: float = 30.0,
        window: int = 8,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.stream, self.clock = stream, clock
        self.start = self.last = self.printed = clock()
        self.done = 0
        self.recent: deque[float] = deque(maxlen=window)

    def step(self) -> str | None:
        """One step is done; returns the line printed, if any."""
        now = self.clock()
        self.done += 1
        self.recent.append(now - self.last)
        self.last = now
        if now - self.printed < self.every and self.done < self.total:
            return None
        self.printed = now
        line = f"{self.label}: {self.done}/{self.total} {self.unit}, {duration(now - self.start)}"
        if self.done < self.total:
            real = [d for d in self.recent if d >= 0.05 * max(self.recent)]  # resumed steps take ~0 s
            line += f", about {duration((self.total - self.done) * sum(real) / len(real))} left"
        print(line, file=self.stream or sys.stderr, flush=True)
        return line


class TextProgress(pl.Callback):
    """:class:`Pace` over the victim steps of ``trainer.predict``, printed by the main process only."""

    def __init__(self, label: str, every: float = 30.0, stream: TextIO | None = None) -> None:
        self.label, self.every, self.stream = label, every, stream
        self.pace: Pace | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            total = int(sum(trainer.num_predict_batches))
            self.pace = Pace(self.label, total, unit="victim steps", every=self.every, stream=self.stream)

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.pace is not None:
            self.pace.step()
