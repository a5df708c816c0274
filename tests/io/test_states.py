"""states.npy (io.states): rows written per segment read back exactly; a partial, truncated or foreign
file is refused with a reason (the sweep then replays); sizes parse as documented."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.io.states import StateWriter, open_states, parse_size, state_bytes

LAYOUT = [("trainable/0000", (3, 2), "w"), ("trainable/0001", (2,), "b"), ("non_trainable/0000", (2,), "seed")]
DTYPES = [np.dtype("float32"), np.dtype("float32"), np.dtype("int64")]
N_STEPS = 7


def segments(rng):
    """Flattened states of steps 0..6 in segments [0, 3), [3, 6), [6, 7)."""
    out = {}
    for start, stop in ((0, 3), (3, 6), (6, 7)):
        n = stop - start
        out[start] = [rng.normal(size=(n, 3, 2)).astype("float32"), rng.normal(size=(n, 2)).astype("float32"), rng.integers(0, 9, size=(n, 2))]
    return out


def write(path, parts):
    writer = StateWriter(path, LAYOUT, DTYPES, N_STEPS)
    for start, arrays in parts.items():
        writer.write(start, arrays)
    writer.commit()


def test_rows_read_back_in_any_range(tmp_path):
    parts = segments(np.random.default_rng(0))
    path = tmp_path / "states.npy"
    write(path, parts)
    run, problem = open_states(path, LAYOUT, DTYPES, N_STEPS)
    assert problem is None
    whole = [np.concatenate([parts[s][j] for s in sorted(parts)]) for j in range(3)]
    for start, stop in ((0, 7), (2, 5), (6, 7)):
        for read, expected in zip(run(start, stop), whole):
            np.testing.assert_array_equal(read, expected[start:stop])
            assert read.dtype == expected.dtype
    assert path.stat().st_size >= N_STEPS * state_bytes(LAYOUT, DTYPES) == N_STEPS * (6 * 4 + 2 * 4 + 2 * 8)
    assert [p.name for p in tmp_path.iterdir()] == ["states.npy"]  # no temporary left


def test_unfinished_writer_leaves_nothing(tmp_path):
    parts = segments(np.random.default_rng(1))
    writer = StateWriter(tmp_path / "states.npy", LAYOUT, DTYPES, N_STEPS)
    writer.write(0, parts[0])
    with pytest.raises(ValueError, match="never written"):
        writer.commit()
    writer.discard()
    assert list(tmp_path.iterdir()) == []


def test_bad_files_are_refused_with_a_reason(tmp_path):
    path = tmp_path / "states.npy"
    assert open_states(path, LAYOUT, DTYPES, N_STEPS) == (None, "missing")
    write(path, segments(np.random.default_rng(2)))
    assert open_states(path, LAYOUT, DTYPES, N_STEPS + 1)[1] == f"holds {N_STEPS} states, the schedule has {N_STEPS + 1} steps"
    other = [*LAYOUT[:2], ("non_trainable/0000", (3,), "seed")]
    assert open_states(path, other, DTYPES, N_STEPS)[1] == "holds the states of another model"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    run, problem = open_states(path, LAYOUT, DTYPES, N_STEPS)
    assert run is None and problem.startswith("unreadable")
    path.write_bytes(b"not numpy")
    assert open_states(path, LAYOUT, DTYPES, N_STEPS)[1].startswith("unreadable")


@pytest.mark.parametrize(
    "text, expected",
    [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1.5g", 1_500_000_000), ("100", 100), (4096, 4096), ("3 kb", 3000), ("10Ki", 10240)],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "2 GiBs", "-1", "lots", True, -5, "1e9"])
def test_not_sizes(text):
    assert parse_size(text) is None
