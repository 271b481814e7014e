"""The README's Python API example runs as written (with the installed package, not the source folders)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs():
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["est"].lower_bound.value.shape == (7,)
    assert float(namespace["lb_avg"].value[0]) > 0
    assert "import models" not in code.replace("import dglbench.models", "")
