"""Calendar periods (day, week from Monday, month) of UTC microsecond times in an IANA time zone.

Exact: the zone's UTC offset is found for every instant, including the seconds around a
daylight-saving change, by locating each offset change between the hours sampled (bisection to
the second). Vectorized over numpy arrays.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

Period = Literal["day", "week", "month"]
US = 1_000_000
DAY_US = 86_400 * US
HOUR_S = 3600
_EPOCH_MONDAY_SHIFT = 3
"""1970-01-01 was a Thursday: day + 3 counts days from Monday 1969-12-29."""


def _offset_s(zone: ZoneInfo, unix_s: int) -> int:
    moment = datetime.fromtimestamp(unix_s, UTC).astimezone(zone)
    offset = moment.utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


@lru_cache(maxsize=64)
def _transitions(tz: str, first_hour: int, last_hour: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(instants in seconds where the offset changes, offset from each instant on), first entry at -inf."""
    zone = ZoneInfo(tz)
    starts = [-(1 << 62)]
    offsets = [_offset_s(zone, first_hour * HOUR_S)]
    for hour in range(first_hour + 1, last_hour + 2):
        offset = _offset_s(zone, hour * HOUR_S)
        if offset == offsets[-1]:
            continue
        lo, hi = (hour - 1) * HOUR_S, hour * HOUR_S  # offset(lo) is the old one, offset(hi) the new
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _offset_s(zone, mid) == offsets[-1]:
                lo = mid
            else:
                hi = mid
        starts.append(hi)
        offsets.append(offset)
    return tuple(starts), tuple(offsets)


def offset_table(tz: str, first_us: int, last_us: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(instants in µs where ``tz``'s UTC offset changes, the first at -infinity; the offset in µs from
    each on), exact for every time in ``[first_us, last_us]``."""
    if tz == "UTC":
        return np.array([-(1 << 62)], np.int64), np.zeros(1, np.int64)
    first, last = first_us // US // HOUR_S - 1, last_us // US // HOUR_S + 1
    # Hours are sampled per whole 1024-hour block so the cache serves neighbouring ranges.
    starts, offsets = _transitions(tz, first - first % 1024, last - last % 1024 + 1024)
    # starts[0] is -infinity: kept as such (in µs it would overflow; it once wrapped round to 0)
    changes = np.asarray(starts[1:], dtype=np.int64) * US
    return np.concatenate([[-(1 << 62)], changes]).astype(np.int64), np.asarray(offsets, np.int64) * US


def local_us(times_us: npt.NDArray[np.int64], tz: str) -> npt.NDArray[np.int64]:
    """Wall-clock microseconds since 1970-01-01 in ``tz`` of UTC ``times_us``."""
    if tz == "UTC" or len(times_us) == 0:
        return times_us.astype(np.int64, copy=True)
    starts, shift = offset_table(tz, int(times_us.min()), int(times_us.max()))
    return times_us + shift[np.searchsorted(starts, times_us, side="right") - 1]


def period_of_day(days: npt.NDArray[np.int64], period: Period) -> npt.NDArray[np.int64]:
    """Period number of local day numbers (days since 1970-01-01): the day, the Monday-week, the month."""
    if period == "day":
        return days
    if period == "week":
        return np.floor_divide(days + _EPOCH_MONDAY_SHIFT, 7)
    return days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


def periods(times_us: npt.NDArray[np.int64], period: Period, tz: str) -> npt.NDArray[np.int64]:
    """Period numbers of UTC microsecond times in time zone ``tz``."""
    return period_of_day(np.floor_divide(local_us(times_us, tz), DAY_US), period)


def period_number(day: date, period: Period) -> int:
    """The period containing the local calendar ``day``."""
    days = np.array([(day - date(1970, 1, 1)).days], dtype=np.int64)
    return int(period_of_day(days, period)[0])


def period_start(number: int, period: Period) -> date:
    """First local day of period ``number``."""
    epoch = date(1970, 1, 1)
    if period == "day":
        return epoch + timedelta(days=number)
    if period == "week":
        return epoch + timedelta(days=number * 7 - _EPOCH_MONDAY_SHIFT)
    return date(1970 + number // 12, number % 12 + 1, 1)
