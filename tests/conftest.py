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


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core machine: a second torch thread costs more in synchronisation than it
    gives. The caller's thread count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_path(*parts: str) -> Path:
    """The path of a shared test file, or skip the calling test when it is absent."""
    path = TEST_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set XRECON_TEST_DATA)")
    return path


def assert_fill_close(got, expected, *, atol: float = 1e-6) -> None:
    """Two ``fill`` results agree: same variables, coordinates, attrs and ``observed``; values to ``atol``.

    Networks are compared to float32 rounding, not bit for bit: BLAS may pick other kernels (and so
    round differently) for other batch compositions or thread counts, and does on some CPUs (AMD EPYC).
    """
    import numpy as np
    import xarray as xr

    assert set(got.variables) == set(expected.variables)
    assert got.attrs == expected.attrs
    xr.testing.assert_identical(got.drop_vars(list(got.data_vars)), expected.drop_vars(list(expected.data_vars)))
    for name, var in expected.data_vars.items():
        assert got[name].dims == var.dims and got[name].dtype == var.dtype, name
        assert got[name].attrs == var.attrs, name
        if np.issubdtype(var.dtype, np.floating):
            np.testing.assert_allclose(got[name].values, var.values, rtol=0, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name].values, var.values, err_msg=name)


def store_files(path) -> dict[str, str]:
    """Every file of a store (chunks and metadata), by the sha256 of its bytes: 'the same bytes' checks."""
    import hashlib

    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out
