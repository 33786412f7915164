"""Every ```python block of README.md runs as written, each on its own (fresh namespace, a temporary working
folder), so a reader can paste any one of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_snippets():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    from lmkan_surgery.errors import DataUnavailableError

    monkeypatch.chdir(tmp_path)
    code = compile(BLOCKS[index], f"README.md python block {index + 1}", "exec")
    try:
        exec(code, {"__name__": "__readme__"})
    except DataUnavailableError as err:  # the distill snippet reads Fashion-MNIST
        pytest.skip(f"data not installed here: {err}")
