"""The cube carries its clear mask (used by default), and bad input is refused clearly and quickly.

Every bad input gets an XreconError (a specific subclass where one fits) whose message names the problem and
what was expected, before anything large is computed or allocated.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xrecon  # noqa: F401  (registers the accessor)
from xrecon.cli import main
from xrecon.cube import MASK_ATTR, from_bands, resolve_mask, validate
from xrecon.errors import CubeError, MethodError, QueryTimesError, XreconError
from xrecon.evaluate import evaluate
from xrecon.io import write_zarr
from xrecon.masks import scl_clear
from xrecon.testing import synthetic_cube
from xrecon.times import MAX_QUERY_TIMES, parse_query_times


@pytest.fixture(scope="module")
def cube() -> xr.Dataset:
    return synthetic_cube(ny=6, nx=6, sar=False, seed=3)


def _band_source(seed: int = 0) -> xr.Dataset:
    """One variable per band and an SCL layer in which cloudy pixel-dates hold bright, finite 'cloud' values."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2020-01-01", periods=24, freq="15D")
    doy = t.dayofyear.to_numpy()[:, None, None]
    base = 0.2 + 0.1 * np.sin(2 * np.pi * doy / 365.25) + np.zeros((24, 5, 5))
    scl = np.where(rng.random((24, 5, 5)) < 0.3, 9, 4).astype("uint8")
    data = {}
    for k, band in enumerate(["B04", "B08"]):
        v = base + 0.05 * k
        v = np.where(scl == 9, 0.9, v)  # clouds: finite, bright and wrong
        data[band] = (("t", "y", "x"), (v * 1e4).astype("uint16"))
    data["SCL"] = (("t", "y", "x"), scl)
    return xr.Dataset(data, coords={"t": t, "y": np.arange(5.0), "x": np.arange(5.0)})


@pytest.fixture(scope="module")
def masked() -> xr.Dataset:
    src = _band_source()
    return from_bands(src, ["B04", "B08"], mask=scl_clear(src.SCL), scale=1e-4)


# ------------------------------------------------------------------------------------------------------------
# Item 4: the cloud mask is used without being asked


def test_from_bands_records_its_mask(masked):
    assert masked["optical"].attrs[MASK_ATTR] == "clear"
    assert masked["clear"].dtype == bool
    assert resolve_mask(masked) == "clear"
    assert validate(masked).mask_name == "clear"
    assert validate(masked, mask=False).clear is None


def test_fill_uses_the_cube_mask_by_default(masked):
    default = masked.recon.fill()
    explicit = masked.recon.fill(mask="clear")
    off = masked.recon.fill(mask=False)
    xr.testing.assert_identical(default, explicit)
    assert default.attrs["mask"] == "clear" and off.attrs["mask"] == ""
    # without the mask the (finite) clouds pass through as observations; with it they are filled
    clear = masked["clear"].values
    assert default["observed"].values.sum() == clear.sum()
    assert off["observed"].values.all()
    cloudy = ~clear
    assert np.nanmax(default["optical"].values.transpose(0, 2, 3, 1)[cloudy]) < 0.5
    assert np.allclose(off["optical"].values.transpose(0, 2, 3, 1)[cloudy], 0.9, atol=1e-3)


def test_none_means_auto_and_a_cube_without_mask_uses_none(masked, cube):
    xr.testing.assert_identical(masked.recon.fill(mask=None), masked.recon.fill())
    bare = cube.drop_vars("clear")
    assert resolve_mask(bare) is None
    assert bare.recon.fill().attrs["mask"] == ""
    # a variable named clear is the cube's mask even without the attribute (synthetic cubes, old stores)
    assert cube.recon.fill().attrs["mask"] == "clear"


def test_evaluate_uses_the_cube_mask_by_default(masked):
    default = evaluate(masked, ["linear"], holdout=0.3, seed=0)
    off = evaluate(masked, ["linear"], holdout=0.3, seed=0, mask=False)
    assert default.attrs["mask"] == "clear" and off.attrs["mask"] == ""
    pd.testing.assert_frame_equal(default, evaluate(masked, ["linear"], holdout=0.3, seed=0, mask="clear"))
    # hiding and scoring clouds as if they were observations makes the scores far worse
    assert default["rmse"].max() < 0.5 * off["rmse"].min()


def test_recorded_mask_that_is_missing_is_refused(masked):
    with pytest.raises(CubeError, match="records its clear mask 'clear'.*mask=False"):
        masked[["optical"]].recon.fill()
    assert masked[["optical"]].recon.fill(mask=False).attrs["mask"] == ""


def test_training_mask_rule(masked, cube):
    from xrecon.training.blocks import training_mask as _training_mask

    assert _training_mask([masked], "optical", "auto") == "clear"
    assert _training_mask([masked], "optical", False) is False
    assert _training_mask([cube.drop_vars("clear")], "optical", None) is False
    with pytest.raises(CubeError, match="different clear masks"):
        _training_mask([masked, cube.drop_vars("clear")], "optical", "auto")


def test_cli_uses_the_mask_by_default_and_no_mask_turns_it_off(masked, tmp_path, capsys):
    src = tmp_path / "in.zarr"
    masked.to_zarr(src)
    assert main(["fill", str(src), str(tmp_path / "a.zarr"), "--quiet"]) == 0
    assert main(["fill", str(src), str(tmp_path / "b.zarr"), "--quiet", "--no-mask"]) == 0
    assert xr.open_zarr(tmp_path / "a.zarr").attrs["mask"] == "clear"
    assert xr.open_zarr(tmp_path / "b.zarr").attrs["mask"] == ""
    with pytest.raises(SystemExit):
        main(["fill", str(src), str(tmp_path / "c.zarr"), "--mask", "clear", "--no-mask"])
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------------------
# Item 5: bad input refused clearly and quickly

OBS = pd.date_range("2020-01-03", "2020-12-20", freq="5D")


@pytest.mark.parametrize(
    ("query", "kwargs", "match"),
    [
        ([1, 2, 3], {}, "int64 values .* not datetimes"),
        (np.arange(3.0), {}, "float64 values .* not datetimes"),
        (5, {}, "not datetimes"),
        (1.5, {}, "not datetimes"),
        (True, {}, "not datetimes"),
        ({"a": 1}, {}, "not datetimes"),
        ([[pd.Timestamp("2020-01-01")]], {}, "one-dimensional"),
        ([pd.Timestamp("2020-01-01"), 3], {}, "not datetimes"),
        ("0D", {}, "is zero; expected a positive step"),
        ("-5D", {}, "is negative; expected a positive step"),
        ("2020-01-01/2020-12-31/0D", {}, "is zero"),
        ("2020-01-01/2020-12-31/-1D", {}, "is negative"),
        ("1s", {}, "give 30.* times; expected at most max_query_times=100000"),
        ("2020-01-01/2030-12-31/1min", {}, "expected at most max_query_times"),
        ("2000-01-01/2200-12-31/1D", {"max_query_times": 1000}, "at most max_query_times=1000"),
        ("1000-01-01/2020-12-31/1MS", {}, "datetime64\\[ns\\] range"),
        ("2020-12-31/2020-01-01/5D", {}, "before they start"),
        ("2020-01-01/2020-12-31/xx", {}, "cannot read the frequency 'xx'"),
        (pd.date_range("2020-01-01", periods=11, freq="h"), {"max_query_times": 10}, "give 11 times"),
        ("5D", {"max_query_times": 0}, "positive integer"),
        ("5D", {"max_query_times": "many"}, "positive integer"),
    ],
)
def test_bad_query_times(query, kwargs, match):
    start = time.perf_counter()
    with pytest.raises(QueryTimesError, match=match):
        parse_query_times(query, OBS, **kwargs)
    assert time.perf_counter() - start < 1.0  # refused before building millions of dates


def test_query_times_bound_can_be_raised():
    assert MAX_QUERY_TIMES == 100_000
    assert len(parse_query_times("1min", OBS, max_query_times=10**6)) > 100_000


def test_fill_refuses_numeric_query_times(cube):
    with pytest.raises(QueryTimesError, match="not datetimes"):
        cube.recon.fill(np.arange(10))
    with pytest.raises(QueryTimesError, match="max_query_times"):
        cube.recon.fill("1s")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "harmonic", "order": 10**6}, MethodError, r"order must be an integer in \[0, 32\]"),
        ({"method": "harmonic", "order": 33}, MethodError, "order"),
        ({"method": "harmonic", "order": "3"}, MethodError, "order"),
        ({"method": "harmonic", "period": "year"}, MethodError, "period must be a positive number"),
        ({"method": "harmonic", "trend": "yes"}, MethodError, "trend must be True or False"),
        ({"method": "whittaker", "lam": -1}, MethodError, "lam"),
        ({"method": "whittaker", "order": 9}, MethodError, "order"),
        ({"method": "whittaker", "lam": "gcv", "lam_grid": np.logspace(0, 6, 10**6)}, MethodError,
         "lam_grid has 1000000 candidates; expected at most 200"),
        ({"keep_observed": "no"}, XreconError, "keep_observed='no'.*expected True or False"),
        ({"keep_observed": 0}, XreconError, "keep_observed"),
        ({"gap_days": "yes"}, XreconError, "gap_days"),
        ({"batch_size": 0}, XreconError, "batch_size"),
        ({"batch_size": 2.5}, XreconError, "batch_size"),
        ({"device": 3}, XreconError, "device"),
        ({"edges": "wrap"}, MethodError, "edges"),
        ({"mask": True}, CubeError, "mask=True"),
        ({"mask": 3}, CubeError, "mask=3"),
        ({"mask": "cloudless"}, CubeError, "'cloudless' is not in the dataset"),
    ],
)
def test_bad_fill_options(cube, kwargs, error, match):
    start = time.perf_counter()
    with pytest.raises(error, match=match):
        cube.recon.fill(**kwargs)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"holdout": "0.2"}, "holdout='0.2' \\(str\\): expected a number"),
        ({"holdout": True}, "holdout=True"),
        ({"holdout": 1.5}, "strictly between 0 and 1"),
        ({"holdout": 0}, "strictly between 0 and 1"),
        ({"holdout": float("nan")}, "strictly between 0 and 1"),
        ({"methods": []}, "methods is empty"),
        ({"methods": [1]}, "method names"),
        ({"methods": ["linear", "linear"]}, "more than once"),
        ({"seed": -1}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"options": {"whittaker": 3}}, "per-method option dicts"),
        ({"by_gap": "yes"}, "by_gap"),
        ({"by_gap": [30, 15]}, "strictly increasing bin edges"),
        ({"by_gap": []}, "strictly increasing bin edges"),
        ({"by_gap": ["a", "b"]}, "numeric bin edges"),
        ({"by_gap_size": [4, 2]}, "strictly increasing"),
    ],
)
def test_bad_evaluate_arguments(cube, kwargs, match):
    kwargs = {"methods": ["linear"], **kwargs}
    with pytest.raises(XreconError, match=match):
        evaluate(cube, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": "fast"}, "lr must be a finite number, got 'fast'"),
        ({"lr": None}, "lr must be a finite number"),
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"weight_decay": "0.1"}, "weight_decay must be a finite number"),
        ({"validation_fraction": "0.1"}, "validation_fraction must be a finite number"),
        ({"steps": 1.5}, "steps must be a positive integer"),
    ],
)
def test_bad_training_options(kwargs, match):
    from xrecon.training.trainer import TrainConfig

    with pytest.raises(XreconError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"anytime": "yes"}, "anytime must be True or False"),
        ({"tv_weight": -1}, "tv_weight must be a finite number >= 0"),
        ({"loss": "l3"}, "loss must be 'l1' or 'mse'"),
        ({"min_obs": 0}, "min_obs must be a positive integer"),
    ],
)
def test_bad_anytimeformer_options(kwargs, match):
    from xrecon.training.tasks import AnytimeFormerOptions

    with pytest.raises(XreconError, match=match):
        AnytimeFormerOptions(**kwargs)


@pytest.mark.parametrize("out", ["", "   "])
def test_train_refuses_an_empty_output_path(cube, out):
    with pytest.raises(XreconError, match="expected a checkpoint file path"):
        cube.recon.train(out=out, steps=1, progress=False)


def test_train_refuses_a_non_numeric_learning_rate_before_training(cube, tmp_path):
    with pytest.raises(XreconError, match="lr must be a finite number"):
        cube.recon.train(out=tmp_path / "m.xrecon", lr="fast", steps=1, progress=False)
    assert not list(tmp_path.iterdir())


def _dn_cube(cube):
    return cube.assign(optical=cube.optical * 10_000)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda c: c.assign_coords(band=["B02", "B02", "B04", "B08"]), "duplicate names \\['B02'\\]"),
        (lambda c: c.assign_coords(y=np.where(np.arange(c.sizes["y"]) == 2, np.nan, c.y.values)),
         "'y' coordinate .* NaN"),
        (lambda c: c.assign_coords(x=np.full(c.sizes["x"], np.inf)), "'x' coordinate .* NaN or infinite"),
        (_dn_cube, "look like digital numbers.*from_bands.*scale=1e-4"),
        (lambda c: c.assign(clear=c.clear.astype("uint8")), "mask variable 'clear' has dtype uint8.*mask=False"),
    ],
)
def test_bad_cubes(cube, make, match):
    with pytest.raises(CubeError, match=match):
        make(cube).recon.fill()


def test_lazy_digital_numbers_fail_when_computed_and_leave_nothing(cube, tmp_path):
    """A lazy cube is not read by fill; its blocks are checked by the same rule when computed."""
    lazy = _dn_cube(cube).chunk({"y": 4, "x": 4})
    out = lazy.recon.fill(method="linear")  # lazy: nothing read yet
    assert out.optical.chunks is not None
    with pytest.raises(CubeError, match="a block being computed.*look like digital numbers.*scale=1e-4"):
        out.compute()
    with pytest.raises(CubeError, match="look like digital numbers"):
        lazy.recon.fill(method="neighbors").compute()  # the patch door checks too
    target = tmp_path / "out.zarr"
    with pytest.raises(CubeError, match="look like digital numbers"):
        write_zarr(out, target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_a_few_bright_pixels_are_not_digital_numbers(cube):
    """Snow or glint above 1.5 in a few pixels is reflectance: under 1 % of the values passes, lazy or not."""
    values = cube.optical.values.copy()
    values[0, 0, 0, 0] = 1.8  # one pixel of one band
    bright = cube.assign(optical=cube.optical.copy(data=values))
    np.testing.assert_array_equal(bright.recon.fill(method="linear").optical.values,
                                  bright.chunk({"y": 4, "x": 4}).recon.fill(method="linear").optical.values)


def test_duplicate_sar_band_names():
    ds = synthetic_cube(ny=4, nx=4, seed=1)
    with pytest.raises(CubeError, match="sar_band.*duplicate names"):
        validate(ds.assign_coords(sar_band=["VV", "VV"]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bands": ["B04", "B04"]}, "duplicate band names"),
        ({"bands": ["B04", "B08"], "band_names": ["red", "red"]}, "duplicate band names \\['red'\\]"),
        ({"bands": "B04"}, "needs a list of optical band variable names"),
        ({"bands": []}, "needs a list"),
    ],
)
def test_bad_from_bands(kwargs, match):
    with pytest.raises(CubeError, match=match):
        from_bands(_band_source(), scale=1e-4, **kwargs)


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "in.zarr"
    synthetic_cube(ny=4, nx=4, sar=False, seed=2).to_zarr(path)
    return path


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["fill", "{in}", ""], "OUTPUT is empty"),
        (["fill", "", "{tmp}/o.zarr"], "INPUT is empty"),
        (["fill", "{in}", "{tmp}/o.zarr", "--scheduler", "gpu"], "--scheduler 'gpu'"),
        (["fill", "{in}", "{tmp}/o.zarr", "--workers", "-2"], "--workers -2"),
        (["fill", "{in}", "{tmp}/o.zarr", "--batch-size", "0"], "--batch-size 0"),
        (["fill", "{in}", "{tmp}/o.zarr", "--query-times", "1s"], "--max-query-times"),
        (["fill", "{in}", "{tmp}/o.zarr", "--query-times", "0D"], "is zero"),
        (["fill", "{in}", "{tmp}/o.zarr", "--method", "harmonic", "--option", "order=100000"], "order"),
        (["fill", "{in}", "{tmp}/o.zarr", "--no-keep-observed", "--mask", "nope"], "'nope' is not in the dataset"),
        (["evaluate", "{in}", "--holdout", "2"], "--holdout 2"),
        (["evaluate", "{in}", "--methods", ","], "--methods ','"),
        (["evaluate", "{in}", "--csv", ""], "--csv is empty"),
        (["train", "{in}", ""], "OUTPUT is empty"),
        (["train", "{in}", "{tmp}/m.xrecon", "--option", "lr=fast", "--quiet"], "lr must be a finite number"),
    ],
)
def test_cli_bad_input_one_line(cube_path, tmp_path, capsys, argv, match):
    argv = [a.format(**{"in": cube_path, "tmp": tmp_path}) for a in argv]
    assert main([*argv, "--quiet"] if argv[0] == "fill" else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xrecon: error: ") and "\n" not in err
    import re

    assert re.search(match, err), err


def test_cli_io_failure_is_one_line(cube_path, tmp_path, capsys):
    parent = tmp_path / "file"
    parent.write_text("not a folder")
    code = main(["fill", str(cube_path), str(parent / "out.zarr"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("xrecon: error: ") and "\n" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize("classes", ["456", 4, [4.5], [True]])
def test_bad_scl_classes(classes):
    with pytest.raises(CubeError, match="classes="):
        scl_clear(xr.DataArray(np.array([4, 8])), classes=classes)
