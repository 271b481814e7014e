"""Sweeps: W&B-format specs, a resumable runner on Lightning, correlation reports and plots."""

from dglbench.sweep.report import write_report
from dglbench.sweep.runner import SweepResult, run_sweep
from dglbench.sweep.spec import SweepSpec, load_spec

__all__ = ["SweepResult", "SweepSpec", "load_spec", "run_sweep", "write_report"]
