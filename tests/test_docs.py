"""The runnable examples in docs/ run, so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import xrecon.methods

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("page", ["writing-a-method.md"])
def test_python_blocks_run(page, capsys):
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    before = set(xrecon.methods.list_methods())
    namespace: dict = {}
    try:
        for block in blocks:
            exec(compile(block, f"{page}", "exec"), namespace)  # noqa: S102 (our own docs)
    finally:
        for name in set(xrecon.methods.list_methods()) - before:
            xrecon.methods.unregister(name)
    assert "nearest-clear" in capsys.readouterr().out
