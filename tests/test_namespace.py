"""One import namespace: every ``dglbench`` module's docstring examples; a wheel that holds ``dglbench`` alone."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import dglbench
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Modules whose examples need a subprocess or minutes of CPU; their code is covered by the tests.
_NO_DOCTEST = {"dglbench.models.zoo"}


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(dglbench.__path__, prefix="dglbench."):
        names.append(info.name)
    return sorted(set(names) | {"dglbench"})


@pytest.mark.parametrize("name", [n for n in _modules() if n not in _NO_DOCTEST])
def test_docstring_examples(name):
    """Every docstring example runs under the module's installed name (``dglbench.…``)."""
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_public_api_importable_from_the_package():
    for name in (
        "i2f",
        "i2f_lower_bound",
        "top_eigenpairs",
        "I2F_lb",
        "compute_exact_bound",
        "create_attack",
        "create_defense",
        "list_attacks",
        "list_defenses",
    ):
        assert callable(getattr(dglbench, name)), name
    assert dglbench.create_attack("dlg").max_iterations >= 1
    assert type(dglbench.create_defense("gaussian", sigma=0.1)).__name__ == "GaussianNoise"


def test_subpackages_map_to_the_fixed_folders():
    assert Path(dglbench.__file__).resolve().parent == ROOT / "benchmark"
    from dglbench import datamodules, models

    assert Path(models.__file__).resolve().parent == ROOT / "models"
    assert Path(datamodules.__file__).resolve().parent == ROOT / "datamodules"


@pytest.mark.slow
def test_wheel_installs_dglbench_alone(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is needed to copy the tracked tree")
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("dglbench-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top == {"dglbench"}, top
    for expected in (
        "dglbench/models/classic.py",
        "dglbench/datamodules/embedded.py",
        "dglbench/configs/demo.yaml",
        "dglbench/attacks/inverting_gradients.py",
        "dglbench/py.typed",
    ):
        assert expected in names, expected
