"""Each training task owns its options: RESTORE-DiT's by keyword and --option, defaults that adapt to short,
cloudy cubes, refusals that name the task's own knob and a value that works; AnytimeFormer's left TrainConfig."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.methods
import xrecon.models
from xrecon.cli import main
from xrecon.errors import CubeError, MethodError, XreconError
from xrecon.testing import synthetic_cube
from xrecon.training import TrainConfig, train, training_files
from xrecon.training.patches import window_shares
from xrecon.training.restore_dit import RestoreDiTOptions, RestoreDiTTask
from xrecon.training.tasks import AnytimeFormerOptions, AnytimeFormerTask

DIT = dict(method="restore-dit", preset="tiny", batch_size=4, mask="clear", steps=2, validation_fraction=0.25,
           progress=False, seed=0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cloudy_cube(n_clear: int = 2, seed: int = 0):
    """A short cube (13 dates) where every pixel is clear on exactly ``n_clear`` random dates."""
    ds = synthetic_cube(ny=32, nx=32, bands=4, seed=seed, start="2020-05-01", end="2020-07-31", revisit_days=7,
                        missing_dates=0, cloud_cover=0.0)
    n_time = ds.sizes["time"]
    order = np.argsort(np.random.default_rng(seed).random((n_time, 32, 32)), axis=0)
    clear = np.zeros((n_time, 32, 32), bool)
    np.put_along_axis(clear, order[:n_clear], True, axis=0)
    ds["clear"] = (("time", "y", "x"), clear)
    ds["optical"] = ds["optical"].where(ds["clear"])
    return ds


@pytest.fixture(scope="module")
def method():
    if "restore-dit" not in xrecon.methods.list_methods():
        pytest.skip("restore-dit is not registered")
    return "restore-dit"


def test_window_shares_are_means_over_consecutive_dates():
    rng = np.random.default_rng(0)
    tiles = rng.random((6, 2, 3))
    got = window_shares(tiles, 4).reshape(3, 2, 3)
    for t0 in range(3):
        np.testing.assert_allclose(got[t0], tiles[t0:t0 + 4].mean(0))
    assert window_shares(tiles, 7).size == 0


def test_options_are_checked_and_name_a_value_that_works():
    for kw, match in ((dict(frames=0), "frames must be a positive integer"), (dict(min_clear=1.5), "min_clear=0.2"),
                      (dict(gap_fraction=0), "gap_fraction"), (dict(sar_window=-1), "sar_window"),
                      (dict(gaps="triangles"), "gaps"), (dict(augment="no"), "augment")):
        with pytest.raises(XreconError, match=match):
            RestoreDiTOptions(**kw)
    # a subclass's class attributes are its defaults, as before the options were a dataclass
    class Short(RestoreDiTTask):
        frames = 4

    assert Short().opts == RestoreDiTOptions(frames=4) and RestoreDiTTask().opts == RestoreDiTOptions()


def test_anytimeformer_options_left_trainconfig_and_keep_their_keywords():
    assert not {"gaps", "loss", "anytime", "min_obs", "window"} & {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(AnytimeFormerOptions.names()) == {"gaps", "loss", "reconstruction_weight", "anytime", "tv_weight",
                                                 "window", "min_obs"}
    # an old saved config that still holds them reads, without them
    old = {**TrainConfig().to_dict(), "loss": "mse", "min_obs": 3}
    assert TrainConfig.from_dict(old) == TrainConfig()
    assert AnytimeFormerTask.options_type is AnytimeFormerOptions


def test_restore_dit_options_by_keyword_are_used_and_recorded(method, tmp_path):
    cube = synthetic_cube(ny=32, nx=32, bands=4, seed=0)
    out = train(cube, tmp_path / "k.xrecon", frames=4, sar_window=3.0, gap_fraction=0.2, gaps="clouds", **DIT)
    for path in training_files(out)[:2]:
        meta = xrecon.models.load(path, device="cpu").metadata["training"]
        assert meta["task_options"]["frames"] == meta["frames"] == 4
        assert meta["task_options"]["gaps"] == "clouds" and meta["sar_window"] == 3.0
    last = xrecon.models.load(training_files(out)[1], device="cpu").metadata["resume"]
    assert last["task_options"]["gap_fraction"] == 0.2
    # resuming keeps them; another value is refused, naming it
    train(cube, out, frames=4, sar_window=3.0, gap_fraction=0.2, gaps="clouds", resume=True, **dict(DIT, steps=3))
    with pytest.raises(XreconError, match=r"differ: \['frames'\]"):
        train(cube, out, frames=6, resume=True, **dict(DIT, steps=4))


def test_unknown_options_list_the_tasks_own(method, tmp_path):
    cube = synthetic_cube(ny=32, nx=32, bands=4, seed=0)
    with pytest.raises(MethodError, match=r"unknown options \['min_obs'\]; restore-dit options: \['augment', "
                                          r"'frames', 'gap_fraction', 'gaps', 'min_clear', 'sar_window', 'tile'\]"):
        train(cube, tmp_path / "u.xrecon", min_obs=2, **DIT)


def test_cli_option_frames(method, tmp_path):
    src = tmp_path / "cube.zarr"
    synthetic_cube(ny=32, nx=32, bands=4, seed=0).drop_vars(["truth", "landcover", "field"]).to_zarr(src)
    out = tmp_path / "cli.xrecon"
    assert main(["train", str(src), str(out), "--method", "restore-dit", "--preset", "tiny", "--steps", "1",
                 "--batch-size", "4", "--mask", "clear", "--validation-fraction", "0.25", "--device", "cpu",
                 "--quiet", "--option", "frames=6"]) == 0
    assert xrecon.models.load(out, device="cpu").metadata["training"]["frames"] == 6


def test_a_short_cloudy_cube_trains_with_a_warning(method, tmp_path):
    cube = cloudy_cube(n_clear=2)  # 13 dates, 2 clear per pixel: about 15 % of a window's pixel-frames
    with pytest.warns(UserWarning, match=r"cloudy: windows of 8 frames have at most \d+% clear .* min_clear=0\.1"):
        out = train(cube, tmp_path / "c.xrecon", **DIT)
    meta = xrecon.models.load(out, device="cpu").metadata["training"]
    assert 0.05 <= meta["task_options"]["min_clear"] < 0.2 and meta["steps"] == 2
    assert np.isfinite(meta["val_loss"])  # the validation windows are cloudy too, and scored


def test_a_given_min_clear_that_nothing_reaches_is_refused_naming_one_that_works(method, tmp_path):
    cube = cloudy_cube(n_clear=2)
    with pytest.raises(CubeError, match=r"\(min_clear=0\.3\); the best window has \d+%: pass min_clear=0\.1\d") as e:
        train(cube, tmp_path / "r.xrecon", min_clear=0.3, **DIT)
    assert "min_obs" not in str(e.value)
    # the value it names trains
    suggested = float(str(e.value).split("pass min_clear=")[1].split()[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # given: no warning
        train(cube, tmp_path / "s.xrecon", min_clear=suggested, **DIT)


def test_frames_default_to_at_most_the_dates(method, tmp_path):
    cube = synthetic_cube(ny=32, nx=32, bands=4, seed=0, start="2020-05-01", end="2020-06-05", missing_dates=0,
                          cloud_cover=0.2)
    n_dates = cube.sizes["time"]
    assert n_dates < 8
    with pytest.warns(UserWarning, match=f"windows of {n_dates} frames"):
        out = train(cube, tmp_path / "f.xrecon", **DIT)
    assert xrecon.models.load(out, device="cpu").metadata["training"]["frames"] == n_dates
    with pytest.raises(CubeError, match=f"frames=9: the cubes have at most {n_dates} optical dates; pass "
                                        f"frames={n_dates} or fewer"):
        train(cube, tmp_path / "g.xrecon", frames=9, **DIT)
