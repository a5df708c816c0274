"""fingerprint: a content hash of named arrays, independent of insertion order and chunk size."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pipeline.io.fingerprint import fingerprint


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(50, 3, 4)).astype(np.float32),
        "y_train": rng.integers(0, 10, size=50),
        "x_val": rng.normal(size=(7, 12)),
    }


def test_is_16_hex_digits_and_deterministic(arrays: dict[str, np.ndarray]) -> None:
    value = fingerprint(arrays)
    assert len(value) == 16 and int(value, 16) >= 0
    assert fingerprint({k: v.copy() for k, v in arrays.items()}) == value


def test_insertion_order_does_not_matter(arrays: dict[str, np.ndarray]) -> None:
    assert fingerprint(dict(reversed(list(arrays.items())))) == fingerprint(arrays)


def test_any_changed_element_changes_it(arrays: dict[str, np.ndarray]) -> None:
    base = fingerprint(arrays)
    for name, index in [("x_train", (49, 2, 3)), ("x_train", (0, 0, 0)), ("y_train", (17,)), ("x_val", (3, 5))]:
        changed = {k: v.copy() for k, v in arrays.items()}
        changed[name][index] += 1
        assert fingerprint(changed) != base, (name, index)


def test_dtype_shape_and_name_change_it(arrays: dict[str, np.ndarray]) -> None:
    base = fingerprint(arrays)
    x = arrays["x_train"]
    assert fingerprint({**arrays, "x_train": x.view(np.int32)}) != base  # same bytes, other dtype
    assert fingerprint({**arrays, "x_train": x.astype(">f4")}) != base  # other byte order
    assert fingerprint({**arrays, "x_train": x.reshape(50, 12)}) != base  # same bytes, other shape
    renamed = {("x_training" if k == "x_train" else k): v for k, v in arrays.items()}
    assert fingerprint(renamed) != base
    assert fingerprint({k: v for k, v in arrays.items() if k != "x_val"}) != base
    # the same bytes split differently between names must not collide
    flat = np.arange(10, dtype=np.int64)
    assert fingerprint({"a": flat[:4], "b": flat[4:]}) != fingerprint({"a": flat[:5], "b": flat[5:]})


def test_chunk_size_does_not_matter(arrays: dict[str, np.ndarray]) -> None:
    base = fingerprint(arrays)
    assert arrays["x_train"].nbytes > 7
    for chunk in (1, 7, 64, arrays["x_train"].nbytes, 1 << 30):
        assert fingerprint(arrays, chunk_bytes=chunk) == base
    with pytest.raises(ValueError, match="chunk_bytes"):
        fingerprint(arrays, chunk_bytes=0)


def test_non_contiguous_and_zero_dim_arrays_hash_their_content() -> None:
    matrix = np.arange(24, dtype=np.float64).reshape(4, 6)
    assert fingerprint({"m": matrix.T}) == fingerprint({"m": np.ascontiguousarray(matrix.T)})
    assert fingerprint({"m": matrix[:, ::2]}) == fingerprint({"m": matrix[:, ::2].copy()})
    assert fingerprint({"m": matrix.T}) != fingerprint({"m": matrix.reshape(6, 4)})
    assert fingerprint({"s": np.float64(3.0)}) != fingerprint({"s": np.array([3.0])})  # shape () vs (1,)
    assert fingerprint({"e": np.zeros((0, 3))}) != fingerprint({"e": np.zeros((3, 0))})


def test_contiguous_array_is_streamed_without_a_copy() -> None:
    big = np.ones(4 << 20, dtype=np.float64)  # 32 MiB
    tracemalloc.start()
    try:
        fingerprint({"big": big}, chunk_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < big.nbytes // 8
