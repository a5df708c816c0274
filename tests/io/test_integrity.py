"""check_part / check_npz / quarantine: a resumed run only skips files that are whole and belong to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.integrity import check_npz, check_part, quarantine

KEY = "f3a9c2d1e0b4a5c6"


def _write_part(path: Path, ids: np.ndarray, key: str | None = KEY) -> Path:
    table = pa.table({"sample_id": pa.array(ids, pa.int64()), "influence": pa.array(np.linspace(-1, 1, len(ids)))})
    if key is not None:
        table = table.replace_schema_metadata({"artifact_key": key})
    pq.write_table(table, path)
    return path


def test_good_part_passes_in_any_order(tmp_path: Path) -> None:
    ids = np.arange(32, 64)
    part = _write_part(tmp_path / "part-00001.parquet", ids[::-1])
    assert check_part(part, ids, KEY) is None
    assert check_part(part, None, KEY) is None
    assert check_part(part, ids.astype(np.int32), KEY) is None


def test_truncated_part_is_unreadable(tmp_path: Path) -> None:
    part = _write_part(tmp_path / "part-00000.parquet", np.arange(32))
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    assert check_part(part, np.arange(32), KEY) == "unreadable (Parquet magic bytes not found in footer)"
    assert check_part(part, None, KEY).startswith("unreadable (")
    part.write_bytes(b"")
    reason = check_part(part, None, KEY)
    assert reason.startswith("unreadable (") and "\n" not in reason


def test_missing_part(tmp_path: Path) -> None:
    assert check_part(tmp_path / "part-00000.parquet", np.arange(3), KEY) == "missing"


def test_wrong_or_absent_key(tmp_path: Path) -> None:
    ids = np.arange(8)
    assert (
        check_part(_write_part(tmp_path / "a.parquet", ids, key="abc"), ids, "def")
        == "written under key abc, expected def"
    )
    assert (
        check_part(_write_part(tmp_path / "b.parquet", ids, key=None), ids, "def")
        == "has no artifact_key metadata, expected key def"
    )


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (np.arange(31), "holds 31 rows, expected 32"),
        (np.arange(33), "holds 33 rows, expected 32"),
        (np.r_[np.arange(31), 5], "holds duplicate sample_ids (32 rows, 31 distinct)"),
        (np.r_[np.arange(31), 99], "sample_ids differ from the shard's"),
        (np.arange(1, 33), "sample_ids differ from the shard's"),
    ],
)
def test_wrong_ids(tmp_path: Path, stored: np.ndarray, reason: str) -> None:
    assert check_part(_write_part(tmp_path / "p.parquet", stored), np.arange(32), KEY) == reason


def test_other_id_column(tmp_path: Path) -> None:
    part = _write_part(tmp_path / "p.parquet", np.arange(4))
    assert check_part(part, np.arange(4), KEY, id_column="row") == "has no row column"


def test_quarantine_never_overwrites(tmp_path: Path) -> None:
    part = tmp_path / "part-00003.parquet"
    part.write_bytes(b"first")
    first = quarantine(part)
    part.write_bytes(b"second")
    second = quarantine(part)
    part.write_bytes(b"third")
    third = quarantine(part)
    assert (first.name, second.name, third.name) == (
        ".part-00003.parquet.corrupt",
        ".part-00003.parquet.corrupt.1",
        ".part-00003.parquet.corrupt.2",
    )
    assert (first.read_bytes(), second.read_bytes(), third.read_bytes()) == (b"first", b"second", b"third")
    assert first.parent == second.parent == tmp_path
    assert not part.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name, third.name])


def test_quarantine_of_missing_file_raises_and_reserves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        quarantine(tmp_path / "gone.parquet")
    assert list(tmp_path.iterdir()) == []


def test_npz_good_missing_truncated_and_corrupt(tmp_path: Path) -> None:
    good = tmp_path / "step=0.npz"
    np.savez(good, **{"trainable/w": np.arange(2000.0).reshape(40, 50), "trainable/b": np.zeros(50)})
    assert check_npz(good) is None
    assert check_npz(tmp_path / "step=1.npz") == "missing"
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    assert check_npz(truncated) == "unreadable (not a zip file)"
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside the first array's data: the zip index is intact, its CRC is not
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(flipped))
    reason = check_npz(corrupt)
    assert reason is not None and reason.startswith("unreadable (") and "\n" not in reason
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, a=np.array([{"x": 1}], dtype=object))
    assert check_npz(pickled).startswith("unreadable (Object arrays cannot be loaded")
