"""The demo section of BENCHMARKS.md: what ``dglbench demo`` prints (its findings), its main table and wall time.

The demo's plots are copied to ``benchmark/findings/demo/`` so that the README can show them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Plots of the demo shown in the README and here (stems in the demo's report folder).
PLOTS = ("i2f_vs_error", "risk_ranking")
DOCS = Path("benchmark/findings/demo")


def run() -> str:
    """Run ``dglbench demo`` in a fresh folder (as a user would) and summarize it."""
    with tempfile.TemporaryDirectory(prefix="dglbench-demo-") as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dglbench.cli", "demo", "--out", tmp], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wall = time.perf_counter() - start
        report = (Path(tmp) / "report" / "report.md").read_text()
        DOCS.mkdir(parents=True, exist_ok=True)
        for stem in PLOTS:
            shutil.copyfile(Path(tmp) / "report" / f"{stem}.png", DOCS / f"{stem}.png")
    findings = report.split("## Findings", 1)[1].split("\n## ", 1)[0].strip()
    block = report.split("## I2F vs attack error", 1)[1].split("\n## ", 1)[0] if "## I2F vs" in report else ""
    table = [ln for ln in block.splitlines() if ln.startswith(("| group", "|---|")) or "| l2_error |" in ln]
    ranking = report.split("Predicted leakage by architecture", 1)[1] if "Predicted leakage" in report else ""
    images = "\n\n".join(f"![{stem}]({(DOCS / f'{stem}.png').as_posix()})" for stem in PLOTS)
    return (
        f"Wall time of `dglbench demo` (after installation, fresh output folder): **{wall:.0f} s**.\n\n"
        f"What the demo prints (its findings):\n\n{findings}\n\n"
        "I2F vs attack error `‖x̂ − x‖` (PSNR and SSIM rows are in the report's CSV):\n\n"
        + "\n".join(table)
        + "\n\nPredicted leakage by architecture"
        + ranking
        + f"\n\n{images}\n"
    )
