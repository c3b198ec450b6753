"""The ``Dataset.recon`` accessor: validates names and delegates; no maths here."""

from __future__ import annotations

import os
from collections.abc import Hashable
from typing import Any

import xarray as xr

from xrecon.cube import AUTO_MASK, DEFAULT_SAR, Cube, validate
from xrecon.times import MAX_QUERY_TIMES

__all__ = ["ReconAccessor"]


@xr.register_dataset_accessor("recon")
class ReconAccessor:
    """Gap filling and reconstruction of optical time series: ``ds.recon.fill(...)``.

    Registered when ``xrecon`` is imported.
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def validate(
        self, *, optical: Hashable = "optical", sar: Hashable | None = DEFAULT_SAR,
        mask: Hashable | bool | None = AUTO_MASK,
    ) -> Cube:
        """Check the cube conventions (metadata only; nothing is computed). See :func:`xrecon.cube.validate`."""
        return validate(self._ds, optical=optical, sar=sar, mask=mask)

    def fill(
        self,
        query_times: Any = None,
        *,
        method: str = "linear",
        checkpoint: str | os.PathLike | None = None,
        optical: Hashable = "optical",
        sar: Hashable | None = DEFAULT_SAR,
        mask: Hashable | bool | None = AUTO_MASK,
        keep_observed: bool = True,
        edges: str = "hold",
        batch_size: int | None = None,
        device: str | None = None,
        gap_days: bool = False,
        max_query_times: int = MAX_QUERY_TIMES,
        **options: Any,
    ) -> xr.Dataset:
        """Reconstruct gap-free optical reflectance at any times.

        Parameters
        ----------
        query_times : None, str or datetimes
            None: the optical times. A pandas frequency such as ``"5D"`` spanning the optical time
            range from its first day; ``"START/END/FREQ"`` such as ``"2019-01-01/2019-12-31/5D"``;
            or datetimes (array-like, DatetimeIndex).
        method : str or model
            A name from :func:`xrecon.methods.list_methods`: ``"linear"``, ``"harmonic"``,
            ``"whittaker"``, a network such as ``"anytimeformer"`` (with ``checkpoint=``), or a method
            you registered (:func:`xrecon.methods.register`); or an xrecon model object.
        checkpoint : path, optional
            A model checkpoint, for the neural methods.
        optical, sar : str
            Variable names. ``sar`` may be absent from the cube under its default name; the classical
            methods ignore it.
        mask : "auto", str or False
            The bool ``(time, y, x)`` clear mask, combined with the NaN-ness of ``optical`` (an
            observation is clear when all its bands are finite and the mask is True). ``"auto"`` (the
            default; None means the same): the cube's own mask, the variable recorded in
            ``optical.attrs["xrecon_mask"]`` by :func:`xrecon.cube.from_bands`, else a variable named
            ``clear``, else none. ``False``: no mask even when the cube has one. Or a variable's name.
            The result's ``attrs["mask"]`` names the mask used ("" for none).
        keep_observed : bool
            Where a query time equals a clear observation's time, return the observation itself.
        edges : {"hold", "nan"}
            Before a pixel's first and after its last clear observation: ``"hold"`` gives the
            method's value at that first (last) observation date, ``"nan"`` gives NaN.
        batch_size, device
            For the networks: pixels per batch, and the torch device (None: CUDA when available).
        gap_days : bool
            Also return ``gap_days`` ``(time, y, x)``: days from each query time to the pixel's nearest
            clear observation (NaN for a pixel without any), the cheapest honest uncertainty proxy.
        max_query_times : int
            The most query times accepted (100,000 by default): a frequency such as ``"1s"`` that
            would give more is refused with a QueryTimesError before anything is built.
        **options
            Method options, e.g. ``order=3, trend=True`` for harmonic, ``lam=...`` for Whittaker.

        Returns
        -------
        xarray.Dataset
            ``optical`` float32 ``(time, band, y, x)`` at the query times and ``observed`` bool
            ``(time, y, x)`` (and any other output the method declares, such as ``optical_std``), with
            the input's spatial chunks, coordinates and CRS, and provenance in ``attrs``. Lazy when the
            input is dask-backed. A pixel with no clear observation is NaN.

        Examples
        --------
        >>> import xrecon
        >>> from xrecon.testing import synthetic_cube
        >>> ds = synthetic_cube(ny=16, nx=16, chunks={"y": 8, "x": 8})
        >>> out = ds.recon.fill("10D", method="whittaker")
        >>> out.optical.dims
        ('time', 'band', 'y', 'x')
        """
        from xrecon.fill import fill

        return fill(
            self._ds,
            query_times,
            method=method,
            checkpoint=checkpoint,
            optical=optical,
            sar=sar,
            mask=mask,
            keep_observed=keep_observed,
            edges=edges,
            batch_size=batch_size,
            device=device,
            gap_days=gap_days,
            max_query_times=max_query_times,
            **options,
        )

    def check(self, query_times: Any = None, **kwargs: Any) -> Any:
        """Report what would make a reconstruction wrong or slow, before running it.

        Returns an :class:`xrecon.check.Report` (a readable ``repr`` and ``.to_frame()``); ``strict=True``
        raises on any warning. See :func:`xrecon.check.check` for the options.
        """
        from xrecon.check import check

        return check(self._ds, query_times=query_times, **kwargs)

    def evaluate(
        self,
        methods: Any = ("linear", "harmonic", "whittaker"),
        *,
        holdout: float = 0.2,
        seed: int = 0,
        checkpoint: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> Any:
        """Hide ``holdout`` of the clear observations, reconstruct them with each method and score them.

        Returns a :class:`pandas.DataFrame` with one row per method and band and columns ``mae``,
        ``rmse``, ``r2``; see :func:`xrecon.evaluate.evaluate` for all options. ``train={"time_budget":
        "5min"}`` trains the networks named without a checkpoint on the cube with the hidden observations
        removed (hide first, then train, then score); a checkpoint trained on them is warned about.

        Examples
        --------
        >>> table = ds.recon.evaluate(["linear", "neighbors", "anytimeformer"], gaps="clouds", holdout=0.1,
        ...                           train={"time_budget": "5min"})  # doctest: +SKIP
        """
        from xrecon.evaluate import evaluate

        return evaluate(self._ds, methods, holdout=holdout, seed=seed, checkpoint=checkpoint, **kwargs)

    def fit_ensemble(self, methods: Any, *, out: str | os.PathLike, **kwargs: Any) -> Any:
        """Fit a blend of ``methods`` with weights per gap class and calibrated intervals on this cube's own
        hidden observations; returns the ensemble file's path for ``fill(method="ensemble", checkpoint=...)``.

        See :func:`xrecon.ensemble.fit_ensemble` for the options (``gaps``, ``holdout``, ``train``,
        ``checkpoints``, ``seed``...).

        Examples
        --------
        >>> ens = ds.recon.fit_ensemble(["linear", "neighbors", "anytimeformer"], out="ens.xrecon",
        ...                             train={"time_budget": "5min"})  # doctest: +SKIP
        >>> out = ds.recon.fill("5D", method="ensemble", checkpoint=ens, interval=0.9)  # doctest: +SKIP
        """
        from xrecon.ensemble import fit_ensemble

        return fit_ensemble(self._ds, methods, out=out, **kwargs)

    def train(self, method: str = "anytimeformer", *, out: str | os.PathLike, **kwargs: Any) -> Any:
        """Train a network on this cube (self-supervised) and return the best checkpoint's path.

        ``ds.recon.fill(method=method, checkpoint=path)`` then uses it. See :func:`xrecon.training.train`
        for the options (``preset``, ``time_budget``, ``steps``, ``batch_size``, ``seed``, ``device``,
        ``validation_fraction``, ``init``, ``resume``...).

        Examples
        --------
        >>> ckpt = ds.recon.train(out="model.xrecon", preset="small", time_budget="10min")  # doctest: +SKIP
        >>> filled = ds.recon.fill("5D", method="anytimeformer", checkpoint=ckpt)  # doctest: +SKIP
        """
        from xrecon.training.trainer import train

        return train(self._ds, out, method=method, **kwargs)
