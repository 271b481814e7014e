"""The demo section of BENCHMARKS.md: ``dglbench demo``'s correlation table and its wall time."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run() -> str:
    """Run ``dglbench demo`` in a fresh folder (as a user would) and summarize it."""
    with tempfile.TemporaryDirectory(prefix="dglbench-demo-") as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dglbench.cli", "demo", "--out", tmp], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wall = time.perf_counter() - start
        report = (Path(tmp) / "report" / "report.md").read_text()
    lines = report.splitlines()
    table = [ln for ln in lines if ln.startswith(("| architecture", "|---|---|")) or "| l2_error |" in ln]
    ranking = report.split("Predicted leakage by architecture", 1)[1] if "Predicted leakage" in report else ""
    return (
        f"Wall time of `dglbench demo` (after installation, fresh output folder): **{wall:.0f} s**.\n\n"
        "I2F vs attack error `‖x̂ − x‖` (PSNR and SSIM rows are in the full report):\n\n"
        + "\n".join(table)
        + "\n\nPredicted leakage by architecture"
        + ranking
    )
