"""A content hash of named arrays: equal names, dtypes, shapes and elements give equal fingerprints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np


def fingerprint(arrays: Mapping[str, np.ndarray], chunk_bytes: int = 1 << 24) -> str:
    """First 16 hex digits of a sha256 over the arrays in name order (insertion order does not matter).

    Each array contributes a header line (name, dtype.str, shape) then its C-order bytes, streamed in
    slices of at most `chunk_bytes`; an array that is already C-contiguous is not copied.
    Raises TypeError for object arrays, which hold pointers rather than content.
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode() + b"\n")
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        for start in range(0, data.nbytes, chunk_bytes):
            digest.update(data[start : start + chunk_bytes])
    return digest.hexdigest()[:16]
