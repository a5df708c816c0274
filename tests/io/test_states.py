"""states.npy (io.states): rows written per segment read back exactly; a partial, truncated or foreign
file is refused with a reason (the sweep then replays); a segment that no longer matches its digest is
reported once, quarantined and never returned; sizes parse as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.io.states import StateWriter, digests_path, discard_states, open_states, parse_size, state_bytes

LAYOUT = [("trainable/0000", (3, 2), "w"), ("trainable/0001", (2,), "b"), ("non_trainable/0000", (2,), "seed")]
DTYPES = [np.dtype("float32"), np.dtype("float32"), np.dtype("int64")]
N_STEPS = 7


def segments(rng):
    """Flattened states of steps 0..6 in segments [0, 3), [3, 6), [6, 7)."""
    out = {}
    for start, stop in ((0, 3), (3, 6), (6, 7)):
        n = stop - start
        out[start] = [
            rng.normal(size=(n, 3, 2)).astype("float32"),
            rng.normal(size=(n, 2)).astype("float32"),
            rng.integers(0, 9, size=(n, 2)),
        ]
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["states.digests.json", "states.npy"]  # no temporary left
    recorded = json.loads(digests_path(path).read_text())
    assert recorded["algorithm"] == "sha256" and recorded["rows"] == N_STEPS
    assert [segment[:2] for segment in recorded["segments"]] == [[0, 3], [3, 6], [6, 7]]
    discard_states(path)
    assert list(tmp_path.iterdir()) == []


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
    assert (
        open_states(path, LAYOUT, DTYPES, N_STEPS + 1)[1]
        == f"holds {N_STEPS} states, the schedule has {N_STEPS + 1} steps"
    )
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
    [
        ("2GB", 2 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5g", 1_500_000_000),
        ("100", 100),
        (4096, 4096),
        ("3 kb", 3000),
        ("10Ki", 10240),
    ],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "2 GiBs", "-1", "lots", True, -5, "1e9"])
def test_not_sizes(text):
    assert parse_size(text) is None


def sweep(run):
    """The segments read as the reverse sweep reads them: last first."""
    return {start: run(start, stop) for start, stop in ((6, 7), (3, 6), (0, 3))}


def scale_one_weight(path, row, factor=1.01):
    rows = np.load(path, mmap_mode="r+")
    rows["trainable/0000"][row, 1, 0] *= factor
    rows.flush()


def write_random_bytes(path, row):
    offset = path.stat().st_size - (N_STEPS - row) * state_bytes(LAYOUT, DTYPES) + 5
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(np.random.default_rng(3).bytes(16))


@pytest.mark.parametrize("damage", [scale_one_weight, write_random_bytes])
def test_a_damaged_segment_is_reported_quarantined_and_never_returned(tmp_path, damage):
    parts = segments(np.random.default_rng(4))
    path = tmp_path / "states.npy"
    write(path, parts)
    damage(path, 4)  # in segment 1, rows 3..5
    told = []
    run, problem = open_states(path, LAYOUT, DTYPES, N_STEPS, told.append)
    assert problem is None
    read = sweep(run)
    for got, expected in zip(read[6], parts[6]):
        np.testing.assert_array_equal(got, expected)  # segment 2 is intact and was read
    assert read[3] is None and read[0] is None and run.damaged == 1
    assert told == ["segment 1 (steps 3..5) does not match its digest; moved to .states.npy.corrupt"]
    assert not path.exists() and (tmp_path / ".states.npy.corrupt").is_file()
    assert open_states(path, LAYOUT, DTYPES, N_STEPS) == (None, "missing")


def test_two_sweeps_of_one_damaged_file_quarantine_it_once(tmp_path):
    path = tmp_path / "states.npy"
    write(path, segments(np.random.default_rng(5)))
    scale_one_weight(path, 0)
    told = []
    runs = [open_states(path, LAYOUT, DTYPES, N_STEPS, told.append)[0] for _ in range(2)]
    assert [sweep(run)[0] for run in runs] == [None, None]
    assert told == [
        "segment 0 (steps 0..2) does not match its digest" + tail for tail in ("; moved to .states.npy.corrupt", "")
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".states.npy.corrupt", "states.digests.json"]


def test_states_without_valid_digests_are_not_trusted(tmp_path):
    path = tmp_path / "states.npy"
    write(path, segments(np.random.default_rng(6)))
    recorded = json.loads(digests_path(path).read_text())
    digests_path(path).unlink()  # as written by an older version
    run, problem = open_states(path, LAYOUT, DTYPES, N_STEPS)
    assert (
        run is None
        and problem == "has no digests (states.digests.json missing: written by an older version), so it is not trusted"
    )
    digests_path(path).write_text(json.dumps({**recorded, "segments": recorded["segments"][1:]}))
    assert (
        open_states(path, LAYOUT, DTYPES, N_STEPS)[1]
        == "has digests (states.digests.json) that do not cover its 7 rows, so it is not trusted"
    )
    digests_path(path).write_text("{")
    assert open_states(path, LAYOUT, DTYPES, N_STEPS)[1].startswith("has unreadable digests (states.digests.json: ")


def test_a_segment_is_written_once(tmp_path):
    parts = segments(np.random.default_rng(7))
    writer = StateWriter(tmp_path / "states.npy", LAYOUT, DTYPES, N_STEPS)
    writer.write(0, parts[0])
    writer.write(0, parts[0])
    with pytest.raises(ValueError, match=r"rows 0\.\.2 written twice"):
        writer.commit()
    writer.discard()
