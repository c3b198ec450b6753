"""What a network trained on (xrecon.leakage), and the honest protocol of evaluate (xrecon.protocol)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import xrecon  # noqa: F401  (registers the accessor)
import xrecon.models
from xrecon import leakage
from xrecon.cli import main
from xrecon.errors import CheckpointError, XreconError
from xrecon.holdout import hide_observations
from xrecon.leakage import LeakError, ObservationSketch, seen_share, sketch
from xrecon.protocol import LeakWarning, split_train_options
from xrecon.testing import synthetic_cube

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A network that trains in about a second: the leak check needs a checkpoint, not a good one.
TINY = dict(preset="small", d_model=16, d_inner=16, d_k=4, d_v=4, fusion_rank=1, dropout=0.0, batch_size=32, block=8,
            validation_fraction=0.25, steps=3, progress=False)


def valid_of(ds: xr.Dataset) -> xr.DataArray:
    return ds.optical.notnull().all("band") & ds.clear


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(ny=24, nx=24, seed=4, chunks=12)


# ------------------------------------------------------------------------------------------- sketches


def test_sketch_is_keyed_to_the_observations_not_to_the_array(cube):
    valid = valid_of(cube)
    whole = sketch(valid, k=500)
    assert whole.count == int(valid.sum()) and len(whole.hashes) == 500 and not whole.exact
    # another chunking, in memory, or the same data with time in another order: the same sketch
    assert np.array_equal(sketch(valid.chunk({"y": 5, "x": 7}), k=500).hashes, whole.hashes)
    assert np.array_equal(sketch(valid.compute(), k=500).hashes, whole.hashes)
    assert np.array_equal(sketch(valid.isel(time=slice(None, None, -1)), k=500).hashes, whole.hashes)
    # float32 coordinates of the same grid (as some stores keep them)
    f32 = valid.assign_coords(y=valid.y.astype(np.float32), x=valid.x.astype(np.float32))
    assert np.array_equal(sketch(f32, k=500).hashes, whole.hashes)
    # a sketch round-trips through plain values (checkpoint metadata, JSON)
    again = ObservationSketch.from_plain(whole.to_plain())
    assert np.array_equal(again.hashes, whole.hashes) and again.count == whole.count
    with pytest.raises(XreconError, match="not a sketch"):
        ObservationSketch.from_plain({"format": "other"})


def test_seen_share_exact_and_estimated(cube):
    valid = valid_of(cube)
    held, hidden = hide_observations(cube, 0.2, seed=1, mask="clear", gaps="clouds")
    full, kept = sketch(valid, k=50_000), sketch(valid_of(held), k=50_000)  # exact: fewer observations than k
    assert full.exact
    on_full = seen_share(full, hidden)
    assert on_full.exact and on_full.share == 1.0 and on_full.hidden == int(hidden.sum())
    assert seen_share(kept, hidden).seen == 0
    # another CRS, or other pixels: nothing in common
    assert seen_share(full, hidden, crs="EPSG:4326").seen == 0
    assert seen_share(full, hidden.assign_coords(x=hidden.x + 1e5)).seen == 0
    # a small sketch estimates the share from a sample: half the cube trained on -> about half seen
    left = sketch(valid.where(valid.x < valid.x[12], False), k=300)
    est = seen_share(left, hidden)
    truth = float(hidden.where(hidden.x < hidden.x[12], False).sum()) / float(hidden.sum())
    assert not est.exact and 0 < est.sampled < est.hidden
    assert abs(est.share - truth) < 0.15
    # merging: the union of two halves sees everything
    right = sketch(valid.where(valid.x >= valid.x[12], False), k=50_000)
    both = sketch(valid.where(valid.x < valid.x[12], False), k=50_000).merge(right)
    assert seen_share(both, hidden).share == 1.0


def test_crs_key_reads_the_grid_mapping_however_the_cube_was_opened(cube, tmp_path):
    path = tmp_path / "cube.zarr"
    cube.to_zarr(path)
    reopened = xr.open_zarr(path)
    assert "spatial_ref" not in reopened.coords  # a data variable after a round trip
    assert leakage.crs_key(cube) == leakage.crs_key(reopened) == "EPSG:32631"
    assert leakage.crs_key(cube.drop_vars("spatial_ref")) == ""


# ------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoints(cube, tmp_path_factory):
    """One network trained on the whole cube, one on the cube with evaluate's hold-out removed."""
    folder = tmp_path_factory.mktemp("leak")
    full = cube.recon.train(out=folder / "full.xrecon", **TINY)
    held, _ = hide_observations(cube, 0.1, seed=0, mask="clear", gaps="clouds")
    honest = held.recon.train(out=folder / "held.xrecon", **TINY)
    return full, honest


def test_a_checkpoint_records_what_it_trained_on(cube, checkpoints):
    full, _ = checkpoints
    meta = xrecon.models.load(full, device="cpu").metadata
    seen = ObservationSketch.from_plain(meta["observations"])
    assert seen.count == int(valid_of(cube).sum())  # training and validation blocks: every clear observation
    last = xrecon.models.load(full.with_name("full.last.xrecon"), device="cpu").metadata
    assert last["observations"] == meta["observations"]


def test_evaluate_warns_naming_the_checkpoint_and_the_share_strict_raises(cube, checkpoints):
    full, honest = checkpoints
    kwargs = dict(gaps="clouds", holdout=0.1, seed=0)
    with pytest.warns(LeakWarning, match=r"anytimeformer: 'full.xrecon' was trained on 100 % of the [\d,]+ hidden"):
        table = cube.recon.evaluate(["linear", "anytimeformer"], checkpoint=full, **kwargs)
    assert table.attrs["leaks"] == {"anytimeformer": 1.0}
    with pytest.raises(LeakError, match="full.xrecon.*not honest.*train="):
        cube.recon.evaluate(["anytimeformer"], checkpoint={"anytimeformer": full}, strict=True, **kwargs)
    # trained on the cube without evaluate's hidden observations: no warning, even strict
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakWarning)
        table = cube.recon.evaluate(["anytimeformer"], checkpoint=honest, strict=True, **kwargs)
    assert table.attrs["leaks"] == {"anytimeformer": 0.0}
    # another seed hides other observations, which the held network did see
    with pytest.warns(LeakWarning, match="held.xrecon"):
        cube.recon.evaluate(["anytimeformer"], checkpoint=honest, gaps="clouds", holdout=0.1, seed=3)


def test_evaluate_train_hides_first_then_trains(cube, tmp_path):
    table = cube.recon.evaluate(["linear", "anytimeformer"], gaps="clouds", holdout=0.1, train=TINY,
                                train_dir=tmp_path)
    assert set(table["method"]) == {"linear", "anytimeformer"}
    assert table.attrs["trained"]["anytimeformer"]["steps"] == TINY["steps"]
    # the network it trained never saw the observations it was scored on
    meta = xrecon.models.load(tmp_path / "anytimeformer.xrecon", device="cpu").metadata
    _, hidden = hide_observations(cube, 0.1, seed=0, mask="clear", gaps="clouds")
    assert seen_share(ObservationSketch.from_plain(meta["observations"]), hidden, crs="EPSG:32631").seen == 0
    # without a checkpoint or train=, a network is refused with the way out
    with pytest.raises(CheckpointError, match=r"train=\{"):
        cube.recon.evaluate(["anytimeformer"], gaps="clouds")


def test_train_options_per_method_or_shared():
    assert split_train_options({"steps": 3}, ["anytimeformer", "restore-dit"]) == {
        "anytimeformer": {"steps": 3}, "restore-dit": {"steps": 3}}
    assert split_train_options({"restore-dit": {"steps": 2}}, ["anytimeformer", "restore-dit"]) == {
        "anytimeformer": {}, "restore-dit": {"steps": 2}}
    with pytest.raises(XreconError, match="mixes method names"):
        split_train_options({"restore-dit": {}, "steps": 3}, ["restore-dit"])
    with pytest.raises(XreconError, match="expected a dict"):
        split_train_options("5min", ["restore-dit"])


def test_cli_evaluate_strict_fails_on_a_leak(cube, checkpoints, tmp_path, capsys):
    full, _ = checkpoints
    path = tmp_path / "cube.zarr"
    cube.to_zarr(path)
    code = main(["evaluate", str(path), "--methods", "linear,anytimeformer", "--gaps", "clouds", "--holdout", "0.1",
                 "--checkpoint", f"anytimeformer={full}", "--strict", "--quiet"])
    assert code == 2 and "not honest" in capsys.readouterr().err
