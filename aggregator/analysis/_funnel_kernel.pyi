"""Stub of the compiled funnel passes (funnel_kernel.c)."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
Matcher = tuple[int, int, Sequence[tuple[I32, I32]]]

def ordered(
    matchers: Sequence[Matcher],
    offsets: I64,
    time: I64,
    etype: npt.NDArray[np.int16],
    within: I64,
    optional: int,
    window: int,
    t0: int,
    t1: int,
    strict: bool,
    out_learner: I64,
    out_entry: I64,
    out_first: I64,
) -> int: ...
def any_order(
    matchers: Sequence[Matcher],
    offsets: I64,
    time: I64,
    etype: npt.NDArray[np.int16],
    steps: int,
    window: int,
    t0: int,
    t1: int,
    out_learner: I64,
    out_entry: I64,
    out_best: I64,
) -> int: ...
