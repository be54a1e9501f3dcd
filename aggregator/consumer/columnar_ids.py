"""Event ids for a whole batch: BLAKE2b-128 of trace id, span id and the event's index (4 bytes,
big-endian), the id :func:`.mapping.event_id` gives one event. Three ways, measured against each other
(``bench --only aggregator_columnar``; docs/aggregator.md, "A columnar batch, measured"):

* :func:`ids_loop`: ``hashlib`` in a comprehension, one Python-level iteration per event;
* :func:`ids_mapped`: the hash inputs laid out by NumPy, then ``map`` over C callables only
  (``functools.partial(hashlib.blake2b, digest_size=16)`` and ``blake2b.digest``): still one C call
  per event, but no Python bytecode per event; the standard library has no batch BLAKE2b;
* :func:`ids_numpy`: BLAKE2b's compression function vectorized over the batch in NumPy uint64
  arithmetic (the 28-byte input is one block): no call per event, but ~2,000 array operations per
  batch.

Each returns the ids as one ``bytes`` of 16 bytes per event, in input order.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import numpy as np

__all__ = ["hash_inputs", "ids_loop", "ids_mapped", "ids_numpy"]

KEY_BYTES = 28


def hash_inputs(trace_ids: np.ndarray, span_ids: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The (events, 28) uint8 hash inputs: ``trace_ids`` (events, 16), ``span_ids`` (events, 8) and
    ``indices`` (events,) as 4 big-endian bytes."""
    keys = np.empty((len(indices), KEY_BYTES), dtype=np.uint8)
    keys[:, :16] = trace_ids
    keys[:, 16:24] = span_ids
    keys[:, 24:] = indices.astype(">u4").view(np.uint8).reshape(-1, 4)
    return keys


def ids_loop(keys: np.ndarray) -> bytes:
    blake2b = hashlib.blake2b
    data = keys.tobytes()
    return b"".join(
        [blake2b(data[i : i + KEY_BYTES], digest_size=16).digest() for i in range(0, len(data), KEY_BYTES)]
    )


_NEW = functools.partial(hashlib.blake2b, digest_size=16)
_DIGEST: Any = hashlib.blake2b.digest


def ids_mapped(keys: np.ndarray) -> bytes:
    # An unstructured void item converts to bytes (NUL bytes kept, unlike "S" strings).
    inputs = np.ascontiguousarray(keys).view(f"V{KEY_BYTES}").ravel().tolist()
    return b"".join(map(_DIGEST, map(_NEW, inputs)))


# --- BLAKE2b (RFC 7693) over NumPy uint64 columns ---------------------------------------------------

_IV = np.array(
    [
        0x6A09E667F3BCC908,
        0xBB67AE8584CAA73B,
        0x3C6EF372FE94F82B,
        0xA54FF53A5F1D36F1,
        0x510E527FADE682D1,
        0x9B05688C2B3E6C1F,
        0x1F83D9ABFB41BD6B,
        0x5BE0CD19137E2179,
    ],
    dtype=np.uint64,
)
_SIGMA = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    (14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3),
    (11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4),
    (7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8),
    (9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13),
    (2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9),
    (12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11),
    (13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10),
    (6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5),
    (10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0),
)
_ROTATIONS = tuple((np.uint64(r), np.uint64(64 - r)) for r in (32, 24, 16, 63))
_PARAMS = 0x01010000 | 16  # fanout 1, depth 1, no key, 16-byte digest


def _rotr(x: np.ndarray, rotation: tuple[np.uint64, np.uint64]) -> np.ndarray:
    right, left = rotation
    return (x >> right) | (x << left)


def _mix(v: list[np.ndarray], a: int, b: int, c: int, d: int, x: Any, y: Any) -> None:
    r32, r24, r16, r63 = _ROTATIONS
    # Message words past the input (words 4-15) are zero: their additions are skipped (None).
    v[a] = v[a] + v[b] if x is None else v[a] + v[b] + x
    v[d] = _rotr(v[d] ^ v[a], r32)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], r24)
    v[a] = v[a] + v[b] if y is None else v[a] + v[b] + y
    v[d] = _rotr(v[d] ^ v[a], r16)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], r63)


def ids_numpy(keys: np.ndarray) -> bytes:
    """BLAKE2b-128 of each 28-byte row of ``keys``: one compression of one final block."""
    count = len(keys)
    block = np.zeros((count, 128), dtype=np.uint8)
    block[:, :KEY_BYTES] = keys
    words = block.view("<u8")  # (count, 16) message words, little-endian
    message = [np.ascontiguousarray(words[:, i]) if i < 4 else None for i in range(16)]
    h = _IV.copy()
    h[0] ^= np.uint64(_PARAMS)
    state = [*h, *_IV]
    state[12] ^= np.uint64(KEY_BYTES)  # bytes compressed so far (low word of the counter)
    state[14] ^= np.uint64(0xFFFFFFFFFFFFFFFF)  # the final block
    v: list[Any] = [np.full(count, word, dtype=np.uint64) for word in state]
    with np.errstate(over="ignore"):
        for round_ in range(12):
            s = _SIGMA[round_ % 10]
            _mix(v, 0, 4, 8, 12, message[s[0]], message[s[1]])
            _mix(v, 1, 5, 9, 13, message[s[2]], message[s[3]])
            _mix(v, 2, 6, 10, 14, message[s[4]], message[s[5]])
            _mix(v, 3, 7, 11, 15, message[s[6]], message[s[7]])
            _mix(v, 0, 5, 10, 15, message[s[8]], message[s[9]])
            _mix(v, 1, 6, 11, 12, message[s[10]], message[s[11]])
            _mix(v, 2, 7, 8, 13, message[s[12]], message[s[13]])
            _mix(v, 3, 4, 9, 14, message[s[14]], message[s[15]])
        out = np.empty((count, 2), dtype="<u8")
        out[:, 0] = h[0] ^ v[0] ^ v[8]
        out[:, 1] = h[1] ^ v[1] ^ v[9]
    return out.tobytes()
