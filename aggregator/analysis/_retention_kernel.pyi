"""Stub of the compiled retention pass (retention_kernel.c)."""

import numpy as np
import numpy.typing as npt

def mark(
    offsets: npt.NDArray[np.int64],
    time: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    shift: npt.NDArray[np.int64],
    kind: int,
    first: int,
    span: int,
    cells: npt.NDArray[np.uint8],
) -> None: ...
