"""Time axes: parsing the query times users ask for, and turning datetimes into numbers for kernels."""

from __future__ import annotations

import datetime
import numbers
from collections.abc import Sequence

import numpy as np
import pandas as pd

from xrecon.errors import QueryTimesError

__all__ = ["parse_query_times", "to_days", "to_ns", "day_of_year", "days_since", "MAX_QUERY_TIMES", "DATE_ORIGIN"]

_NS_PER_DAY = 86_400 * 10**9

#: RESTORE-DiT's date convention (``RestoreDiTConfig.date_origin``, the patch stream's default): frame dates
#: are days since upstream's PASTIS reference day. The one place this day is written.
DATE_ORIGIN = "2018-09-01"

#: The most query times ``fill`` accepts unless ``max_query_times=`` raises it: a frequency such as "1s"
#: over a year would otherwise ask for 31 million output dates (terabytes) without a word.
MAX_QUERY_TIMES = 100_000


def _too_many(n: int | str, text: object, max_query_times: int) -> QueryTimesError:
    return QueryTimesError(
        f"query times {text!r} give {n} times; expected at most max_query_times={max_query_times} "
        "(a coarser frequency such as '5D', or raise max_query_times= / --max-query-times)"
    )


def _range(start: pd.Timestamp, end: pd.Timestamp, freq: str, text: str, max_query_times: int) -> pd.DatetimeIndex:
    """pd.date_range(start, end, freq), refusing a zero or negative step and too many times before building it."""
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError) as err:
        raise QueryTimesError(
            f"cannot read the frequency {freq!r} of query times {text!r} ({err}); expected a positive pandas "
            "frequency such as '5D', '1W' or '1MS'"
        ) from None
    if offset.n <= 0:
        raise QueryTimesError(
            f"the frequency {freq!r} of query times {text!r} is {'zero' if offset.n == 0 else 'negative'}; "
            "expected a positive step such as '5D'"
        )
    if end < start:
        raise QueryTimesError(f"query times {text!r} end ({end}) before they start ({start}); expected START <= END")
    try:
        start, end = pd.Timestamp(start).as_unit("ns"), pd.Timestamp(end).as_unit("ns")
        first_two = pd.date_range(start, periods=2, freq=offset)
    except (ValueError, OverflowError) as err:  # OutOfBoundsDatetime is a ValueError
        raise _out_of_range(text, err) from None
    # Count before building: exact for fixed steps (days, hours...), within a few percent for calendar
    # ones (months, years...), whose length is checked exactly once built.
    step_ns = max((first_two[1] - first_two[0]).value, 1)
    estimate = (end - start).value // step_ns + 1
    if estimate > 1.2 * max_query_times:
        raise _too_many(estimate, text, max_query_times)
    result = pd.date_range(start, end, freq=offset)
    if len(result) > max_query_times:
        raise _too_many(len(result), text, max_query_times)
    return result


def _check_datetime_values(values: np.ndarray) -> None:
    """Refuse numbers (which pandas would read as nanoseconds since 1970) and other non-datetimes."""
    kind = values.dtype.kind
    if kind in "MUS":
        return
    if kind == "O":
        bad = [v for v in values.ravel()[:1000].tolist() if not isinstance(v, str | datetime.date | np.datetime64)
               and v is not pd.NaT and v is not None]
        if not bad:
            return
        example = bad[0]
    else:
        example = values.ravel()[0] if values.size else None
    raise QueryTimesError(
        f"query_times holds {values.dtype} values such as {example!r}, not datetimes; expected datetimes "
        "(datetime64, pandas.Timestamp, date strings), a frequency string such as '5D', or None "
        "(numbers are refused: their unit and epoch are ambiguous)"
    )


def _out_of_range(text: str, err: Exception) -> QueryTimesError:
    return QueryTimesError(
        f"query times {text!r} fall outside the datetime64[ns] range ({err}); expected dates between 1678 and 2261"
    )


def _as_naive_utc(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    return index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index


def _parse_string(text: str, observed: pd.DatetimeIndex, max_query_times: int) -> pd.DatetimeIndex:
    parts = text.split("/")
    if len(parts) == 3:
        start, end, freq = (p.strip() for p in parts)
        try:
            start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
            if start_ts is pd.NaT or end_ts is pd.NaT:
                raise ValueError("NaT")
        except (ValueError, TypeError) as err:
            raise QueryTimesError(
                f"cannot read query times {text!r} as START/END/FREQ ({err}); expected e.g. "
                "'2019-01-01/2019-12-31/5D'"
            ) from None
        try:  # pandas 2 casts to nanoseconds here already (pandas 3 keeps the unit and fails in _range)
            start_ts, end_ts = (_as_naive_utc(pd.DatetimeIndex([ts]))[0] for ts in (start_ts, end_ts))
        except (ValueError, OverflowError) as err:  # OutOfBoundsDatetime is a ValueError
            raise _out_of_range(text, err) from None
        return _range(start_ts, end_ts, freq, text, max_query_times)
    if len(parts) == 1:
        try:
            pd.tseries.frequencies.to_offset(text)
        except ValueError:
            pass
        else:
            if len(observed) == 0:
                raise QueryTimesError("a frequency needs optical times to span; the cube has none")
            return _range(observed.min().normalize(), observed.max(), text, text, max_query_times)
        try:
            return pd.DatetimeIndex([pd.Timestamp(text)])
        except ValueError:
            pass
    raise QueryTimesError(
        f"cannot read query times {text!r}; expected a pandas frequency such as '5D' (spanning the optical "
        "times), 'START/END/FREQ' such as '2019-01-01/2019-12-31/5D', or a date"
    )


def parse_query_times(
    query_times: None | str | Sequence | np.ndarray | pd.DatetimeIndex, observed: pd.DatetimeIndex,
    *, max_query_times: int = MAX_QUERY_TIMES,
) -> pd.DatetimeIndex:
    """Turn what a user passed as ``query_times`` into a DatetimeIndex (ns, timezone-naive UTC).

    Parameters
    ----------
    query_times
        None (the optical times), a pandas frequency string such as ``"5D"`` spanning the optical
        time range from its first day, ``"START/END/FREQ"``, a single date string, or datetimes.
    observed : pandas.DatetimeIndex
        The cube's optical times.
    max_query_times : int
        The most query times accepted (:data:`MAX_QUERY_TIMES`, 100,000, by default); a frequency
        that would give more is refused before any date is generated.

    Raises
    ------
    xrecon.errors.QueryTimesError
        For numbers or other values that are not datetimes, a zero or negative frequency, more than
        ``max_query_times`` times, no time, NaT or duplicates.

    Examples
    --------
    >>> obs = pd.DatetimeIndex(["2020-01-03", "2020-01-20"])
    >>> parse_query_times("5D", obs).strftime("%m-%d").tolist()
    ['01-03', '01-08', '01-13', '01-18']
    >>> len(parse_query_times("2020-01-01/2020-12-31/1MS", obs))
    12
    """
    if isinstance(max_query_times, bool) or not isinstance(max_query_times, numbers.Integral) or max_query_times < 1:
        raise QueryTimesError(f"max_query_times={max_query_times!r}: expected a positive integer")
    if query_times is None:
        result = pd.DatetimeIndex(observed)
    elif isinstance(query_times, str):
        result = _parse_string(query_times, observed, int(max_query_times))
    elif isinstance(query_times, bool | numbers.Number | dict | set | bytes):
        raise QueryTimesError(
            f"query_times={query_times!r} ({type(query_times).__name__}) is not datetimes; expected None, a "
            "frequency string such as '5D', 'START/END/FREQ', or datetimes (array-like, DatetimeIndex)"
        )
    elif isinstance(query_times, pd.Timestamp | datetime.date | np.datetime64):
        result = pd.DatetimeIndex([query_times])
    else:
        values = np.atleast_1d(np.asarray(query_times)) if not isinstance(query_times, pd.Index) else query_times
        _check_datetime_values(np.asarray(values))
        if np.asarray(values).ndim != 1:
            raise QueryTimesError(
                f"query_times has shape {np.asarray(values).shape}; expected a one-dimensional sequence of datetimes"
            )
        if len(values) > max_query_times:
            raise _too_many(len(values), "query_times", int(max_query_times))
        try:
            result = pd.DatetimeIndex(values)
        except (TypeError, ValueError) as err:
            raise QueryTimesError(
                f"cannot read query_times as datetimes ({err}); expected datetimes, a frequency string or None"
            ) from None
    if len(result) > max_query_times:
        raise _too_many(len(result), "query_times", int(max_query_times))
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


def days_since(times: object, origin: str = DATE_ORIGIN) -> np.ndarray:
    """Dates (anything ``numpy.datetime64`` takes) -> float64 days since ``origin`` (default :data:`DATE_ORIGIN`).

    Examples
    --------
    >>> days_since(["2018-09-01", "2019-09-01T12:00"])
    array([  0. , 365.5])
    """
    t = np.asarray(times, dtype="datetime64[ns]")
    return (t - np.datetime64(origin, "ns")) / np.timedelta64(1, "D")
