"""One learner across analytics key rotations: pseudonyms linked to the one they replaced.

``analysis_learners.previous_hash`` (revision 0020_funnels_finish) links a pseudonym to the same
learner's pseudonym under the previous key. Each pseudonym has at most one previous one, and a
pseudonym under a new key is never anyone's previous under an older key, so the links form chains
(new -> ... -> oldest). A learner is represented by the **oldest** pseudonym of its chain (its
root): the root of every pseudonym stays the same when links are added, so a refresh never has
to move a learner's rows to a code other than the root they already hold. Pure numpy, no I/O.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I32 = npt.NDArray[np.int32]


def roots(previous: I32) -> I32:
    """``previous[c]``: the code of pseudonym ``c``'s previous pseudonym, or -1. Each code's root.

    Pointer jumping: O(n log longest chain). A cycle (impossible for HMAC pseudonyms, but data is
    data) is resolved link by link instead, each member taking the cycle's smallest code.
    """
    n = len(previous)
    parent = np.where(previous >= 0, previous, np.arange(n, dtype=np.int32)).astype(np.int32)
    for _ in range(64):  # 2^64 > any chain
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand
    return _roots_slowly(previous)


def _roots_slowly(previous: I32) -> I32:
    out = np.full(len(previous), -1, np.int32)
    for code in range(len(previous)):
        path: list[int] = []
        seen: set[int] = set()
        c = code
        while out[c] < 0 and previous[c] >= 0 and c not in seen:
            seen.add(c)
            path.append(c)
            c = int(previous[c])
        root = int(out[c]) if out[c] >= 0 else (min(seen) if c in seen else c)
        out[path] = root
        out[c] = root if out[c] < 0 else out[c]
    return out
