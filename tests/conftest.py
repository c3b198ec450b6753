"""Shared test fixtures.

Real data and reference files live outside the project (a user's checkout has none of them). They are
found through one setting, ``XRECON_TEST_DATA`` (default: ``../shared`` beside the project root), and
tests that need them skip cleanly when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(os.environ.get("XRECON_TEST_DATA", PROJECT_ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """The path of a shared test file, or skip the calling test when it is absent."""
    path = TEST_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set XRECON_TEST_DATA)")
    return path
