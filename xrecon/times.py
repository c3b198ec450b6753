"""Time axes: parsing the query times users ask for, and turning datetimes into numbers for kernels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from xrecon.errors import QueryTimesError

__all__ = ["parse_query_times", "to_days", "to_ns", "day_of_year"]

_NS_PER_DAY = 86_400 * 10**9


def _as_naive_utc(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    return index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index


def _parse_string(text: str, observed: pd.DatetimeIndex) -> pd.DatetimeIndex:
    parts = text.split("/")
    if len(parts) == 3:
        start, end, freq = (p.strip() for p in parts)
        try:
            return pd.date_range(pd.Timestamp(start), pd.Timestamp(end), freq=freq)
        except (ValueError, TypeError) as err:
            raise QueryTimesError(
                f"cannot read query times {text!r} as START/END/FREQ ({err}); expected e.g. "
                "'2019-01-01/2019-12-31/5D'"
            ) from None
    if len(parts) == 1:
        try:
            pd.tseries.frequencies.to_offset(text)
        except ValueError:
            pass
        else:
            if len(observed) == 0:
                raise QueryTimesError("a frequency needs optical times to span; the cube has none")
            return pd.date_range(observed.min().normalize(), observed.max(), freq=text)
        try:
            return pd.DatetimeIndex([pd.Timestamp(text)])
        except ValueError:
            pass
    raise QueryTimesError(
        f"cannot read query times {text!r}; expected a pandas frequency such as '5D' (spanning the optical "
        "times), 'START/END/FREQ' such as '2019-01-01/2019-12-31/5D', or a date"
    )


def parse_query_times(
    query_times: None | str | Sequence | np.ndarray | pd.DatetimeIndex, observed: pd.DatetimeIndex
) -> pd.DatetimeIndex:
    """Turn what a user passed as ``query_times`` into a DatetimeIndex (ns, timezone-naive UTC).

    Parameters
    ----------
    query_times
        None (the optical times), a pandas frequency string such as ``"5D"`` spanning the optical
        time range from its first day, ``"START/END/FREQ"``, a single date string, or datetimes.
    observed : pandas.DatetimeIndex
        The cube's optical times.

    Examples
    --------
    >>> obs = pd.DatetimeIndex(["2020-01-03", "2020-01-20"])
    >>> parse_query_times("5D", obs).strftime("%m-%d").tolist()
    ['01-03', '01-08', '01-13', '01-18']
    >>> len(parse_query_times("2020-01-01/2020-12-31/1MS", obs))
    12
    """
    if query_times is None:
        result = pd.DatetimeIndex(observed)
    elif isinstance(query_times, str):
        result = _parse_string(query_times, observed)
    else:
        try:
            values = np.atleast_1d(np.asarray(query_times)) if not isinstance(query_times, pd.Index) else query_times
            result = pd.DatetimeIndex(values)
        except (TypeError, ValueError) as err:
            raise QueryTimesError(
                f"cannot read query_times as datetimes ({err}); expected datetimes, a frequency string or None"
            ) from None
    result = _as_naive_utc(result).astype("datetime64[ns]")
    if len(result) == 0:
        raise QueryTimesError(f"query_times {query_times!r} gives no time; expected at least one")
    if result.hasnans:
        raise QueryTimesError("query_times contains NaT; expected valid datetimes")
    if result.has_duplicates:
        raise QueryTimesError(
            f"query_times has duplicates {[str(t) for t in result[result.duplicated()][:5]]}; expected unique times"
        )
    return result


def to_ns(times: pd.DatetimeIndex | np.ndarray | None) -> tuple[int, ...] | None:
    """Datetimes -> int64 nanoseconds since 1970 as a tuple (small, hashable, for a dask graph).

    Not ``DatetimeIndex.asi8``: its unit follows the index's resolution (seconds, microseconds...
    with pandas 3), so two indexes of the same times may give different integers.

    Examples
    --------
    >>> import pandas as pd
    >>> to_ns(pd.DatetimeIndex(["1970-01-02"]).as_unit("s"))
    (86400000000000,)
    """
    if times is None:
        return None
    return tuple(np.asarray(times, dtype="datetime64[ns]").view(np.int64).tolist())


def to_days(times: pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """Datetimes -> float64 days since 1970-01-01 (exact to the nanosecond up to ~100 years)."""
    ns = np.asarray(times, dtype="datetime64[ns]").astype(np.int64)
    return ns / _NS_PER_DAY


def day_of_year(times: pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """Datetimes -> day of year (1..366) as float64; the time of day is dropped."""
    index = pd.DatetimeIndex(np.asarray(times, dtype="datetime64[ns]"))
    return index.dayofyear.to_numpy(dtype=np.float64)
