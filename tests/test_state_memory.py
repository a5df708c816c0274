"""influence.state_memory through the pipeline: training keeps every state in trajectory/seed=<s>/states.npy
when it fits the budget, and the sweep reads it instead of replaying, with the same scores and query
parts bit for bit; over budget, or with a damaged file, the sweep replays and says so in its summary.
A file whose bytes changed is caught by its segment digests: one line, the file quarantined, and the
replayed scores bit-identical to a clean run. A checkpoint with a changed weight is caught by its CRCs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_pipeline_run import small_settings

from pipeline.config import InfluenceSettings
from pipeline.errors import DataError
from pipeline.run import execute


def with_influence(out, **influence):
    base = small_settings(out, stages=("train", "score"))
    changes = {"queries": "per_sample", "query_ids": (1, 6), "query_batch": 2, **influence}
    return replace(base, influence=replace(InfluenceSettings(), **changes))


def scores(root):
    return pq.read_table(root / "scores" / "method=trajectory" / "seed=0" / "part-00000.parquet")


def queries(root):
    return pq.read_table(root / "queries" / "method=trajectory" / "seed=0" / "part-00000.parquet")


def summaries(root):
    train = json.loads((root / "trajectory" / "seed=0" / "_summary.json").read_text())
    score = json.loads((root / "scores" / "method=trajectory" / "seed=0" / "_summary.json").read_text())
    query = json.loads((root / "queries" / "method=trajectory" / "seed=0" / "_summary.json").read_text())
    return train, score, query


def test_kept_states_replace_the_replay_with_identical_results(ray_session, tmp_path):
    execute(with_influence(tmp_path / "replay"))
    execute(with_influence(tmp_path / "kept", state_memory="1GB"))

    train, score, query = summaries(tmp_path / "kept")
    assert train["states"]["kept"] and (tmp_path / "kept" / "trajectory" / "seed=0" / "states.npy").is_file()
    assert score["replayed"] is False and query["replayed"] is False and query["queries_per_second"] > 0
    states = np.load(tmp_path / "kept" / "trajectory" / "seed=0" / "states.npy", mmap_mode="r")
    assert states.shape == (train["n_steps"],) and train["states"]["bytes"] == states.nbytes
    with np.load(tmp_path / "kept" / "trajectory" / "seed=0" / "checkpoints" / "step=4.npz") as checkpoint:
        np.testing.assert_array_equal(states[4]["trainable/0000"], checkpoint["trainable/0000"])
    assert summaries(tmp_path / "replay")[1]["replayed"] is True
    assert not (tmp_path / "replay" / "trajectory" / "seed=0" / "states.npy").exists()
    for read in (scores, queries):
        kept, replayed = read(tmp_path / "kept"), read(tmp_path / "replay")
        np.testing.assert_array_equal(kept["influence"].to_numpy(), replayed["influence"].to_numpy())
    np.testing.assert_array_equal(
        np.stack(scores(tmp_path / "kept")["input_grad"].to_numpy(zero_copy_only=False)),
        np.stack(scores(tmp_path / "replay")["input_grad"].to_numpy(zero_copy_only=False)),
    )


def test_over_budget_or_damaged_states_fall_back_to_the_replay(ray_session, tmp_path):
    execute(with_influence(tmp_path / "small", state_memory="1KB"))
    train, score, _ = summaries(tmp_path / "small")
    assert (
        train["states"] == {"kept": False, "bytes": train["states"]["bytes"], "budget": 1000}
        and train["states"]["bytes"] > 1000
    )
    assert score["replayed"] is True and not (tmp_path / "small" / "trajectory" / "seed=0" / "states.npy").exists()

    root = tmp_path / "damaged"
    execute(with_influence(root, state_memory="1GB"))
    reference = scores(root)["influence"].to_numpy()
    path = root / "trajectory" / "seed=0" / "states.npy"
    path.write_bytes(path.read_bytes()[:-100])
    for part in (root / "scores").rglob("part-*.parquet"):
        part.unlink()
    execute(with_influence(root, state_memory="1GB"))
    assert summaries(root)[1]["replayed"] is True
    np.testing.assert_array_equal(scores(root)["influence"].to_numpy(), reference)


def seed_dir(root):
    return root / "trajectory" / "seed=0"


def drop_parts(root):
    for part in [*(root / "scores").rglob("part-*.parquet"), *(root / "queries").rglob("part-*.parquet")]:
        part.unlink()


def assert_same_scores(root, reference):
    for read in (scores, queries):
        got, expected = read(root), read(reference)
        np.testing.assert_array_equal(got["influence"].to_numpy(), expected["influence"].to_numpy())
    np.testing.assert_array_equal(
        np.stack(scores(root)["input_grad"].to_numpy(zero_copy_only=False)),
        np.stack(scores(reference)["input_grad"].to_numpy(zero_copy_only=False)),
    )


def scale_one_weight(path):
    """One stored weight of step 5 (the middle segment of 0..3, 4..7, 8..11) times 1.01, in place."""
    rows = np.load(path, mmap_mode="r+")
    rows["trainable/0000"][5, 3, 2] *= 1.01
    rows.flush()


def write_random_bytes(path):
    """16 random bytes inside the records of step 6."""
    rows = np.load(path, mmap_mode="r")
    offset = path.stat().st_size - rows.nbytes + 6 * rows.dtype.itemsize + 40
    del rows
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(np.random.default_rng(0).bytes(16))


def worker_lines(capfd, needle):
    """Lines of the captured output that contain `needle` (Ray forwards a worker's prints to the driver)."""
    import time

    lines = []
    for _ in range(50):
        out, err = capfd.readouterr()
        lines += [line for line in (out + err).splitlines() if needle in line]
        if lines:
            time.sleep(1.0)  # the rest of the run's lines
            out, err = capfd.readouterr()
            return lines + [line for line in (out + err).splitlines() if needle in line]
        time.sleep(0.2)
    return lines


@pytest.mark.parametrize("damage", [scale_one_weight, write_random_bytes])
def test_changed_states_are_caught_quarantined_and_replayed_bit_identically(ray_session, tmp_path, capfd, damage):
    reference, root = tmp_path / "reference", tmp_path / "damaged"
    execute(with_influence(reference, state_memory="1GB"))
    execute(with_influence(root, state_memory="1GB"))
    damage(seed_dir(root) / "states.npy")
    drop_parts(root)
    capfd.readouterr()

    payload = execute(with_influence(root, state_memory="1GB"))

    assert payload["status"] == "succeeded"
    assert_same_scores(root, reference)
    assert not (seed_dir(root) / "states.npy").exists() and (seed_dir(root) / ".states.npy.corrupt").is_file()
    lines = worker_lines(capfd, "states.npy")
    caught = (
        "[score] seed=0: trajectory/seed=0/states.npy segment 1 (steps 4..7) does not match its digest; moved to "
        ".states.npy.corrupt; replaying from the checkpoints"
    )
    gone = (
        "[score] seed=0: trajectory/seed=0/states.npy missing (quarantined after a digest mismatch); replaying from "
        "the checkpoints"
    )
    assert sum(caught in line for line in lines) == 1, lines
    assert all(caught in line or gone in line for line in lines), (
        lines
    )  # the other sweep of the seed found it moved aside


def test_states_without_digests_are_not_trusted(ray_session, tmp_path, capfd):
    root = tmp_path / "old"
    execute(with_influence(root, state_memory="1GB"))
    reference = tmp_path / "reference"
    reference.mkdir()
    for part in (root / "scores", root / "queries"):
        shutil.copytree(part, reference / part.name)
    (seed_dir(root) / "states.digests.json").unlink()  # as an older version wrote it
    drop_parts(root)
    capfd.readouterr()

    execute(with_influence(root, state_memory="1GB"))

    assert summaries(root)[1]["replayed"] is True
    assert_same_scores(root, reference)
    lines = worker_lines(capfd, "states.npy")
    assert lines and all(
        "[score] seed=0: trajectory/seed=0/states.npy has no digests (states.digests.json missing: written by an "
        "older version), "
        "so it is not trusted; replaying from the checkpoints" in line
        for line in lines
    ), lines
    assert (seed_dir(root) / "states.npy").is_file()  # nothing known to be wrong: kept, never read


def test_a_changed_checkpoint_weight_is_caught_and_the_seed_retrained(ray_session, tmp_path, capfd):
    root, reference = tmp_path / "run", tmp_path / "reference"
    execute(with_influence(root))
    for part in (root / "scores", root / "queries"):
        shutil.copytree(part, reference / part.name)
    checkpoint = seed_dir(root) / "checkpoints" / "step=4.npz"
    with np.load(checkpoint) as archive:
        original = {name: archive[name] for name in archive.files}
    at = checkpoint.read_bytes().find(original["trainable/0000"].tobytes())  # np.savez stores members uncompressed
    assert at > 0
    changed = original["trainable/0000"].copy()
    changed[3, 2] *= 1.01
    with open(checkpoint, "r+b") as handle:
        handle.seek(at)
        handle.write(changed.tobytes())
    drop_parts(root)

    with pytest.raises(
        DataError,
        match=(
            r"step=4\.npz: checkpoint unreadable \(Bad CRC-32 for file 'trainable/0000\.npy'\); rerun with train in "
            r"stages"
        ),
    ):
        execute(replace(with_influence(root), stages=("score",)))
    capfd.readouterr()
    execute(with_influence(root))

    out, _ = capfd.readouterr()
    assert (
        "[train] seed=0: checkpoint step=4.npz unreadable (Bad CRC-32 for file 'trainable/0000.npy'); retraining" in out
    )
    with np.load(checkpoint) as archive:  # the deterministic retraining wrote it again
        assert {name: archive[name].tobytes() for name in archive.files} == {
            name: a.tobytes() for name, a in original.items()
        }
    assert_same_scores(root, reference)


STEPS, RECORD = 12, 8000  # a fake run: 12 states of one float64 tensor [100, 10]
NEED = STEPS * RECORD


@pytest.mark.parametrize(
    "memory,disk,kept",
    [
        (4 * NEED, 4 * NEED, True),  # a quarter of each is exactly what the states need
        (4 * NEED - 4, 10 * NEED, False),  # memory short by a byte of the quarter
        (10 * NEED, 4 * NEED - 4, False),  # disk short
        (10 * NEED, None, True),  # disk unknown: memory decides
        (None, None, False),  # nothing known: keep nothing
    ],
)
def test_auto_keeps_states_when_they_fit_a_quarter_of_memory_and_disk(tmp_path, monkeypatch, memory, disk, kept):
    from pipeline.io import states
    from pipeline.io.layout import RunLayout
    from pipeline.runtime.train import state_writer

    monkeypatch.setattr(states, "memory_available", lambda: memory)
    seen = []
    monkeypatch.setattr(states, "disk_free", lambda path: seen.append(path) or disk)
    settings = with_influence(tmp_path / "run", state_memory="auto")
    layout = [("trainable/0000", (100, 10), "dense/kernel")]
    run = RunLayout(settings.output_dir)
    writer, record = state_writer(settings, run, 0, layout, [np.dtype("float64")], STEPS)

    assert seen == [run.root]  # the free disk of output.dir
    known = [v for v in (memory, disk) if v is not None]
    assert record == {
        "kept": kept,
        "bytes": NEED,
        "budget": min(known) // 4 if known else 0,
        "memory": memory,
        "disk": disk,
    }
    assert (writer is not None) == kept
    if writer is not None:
        writer.discard()
    # a size is a size, whatever the machine has
    writer, record = state_writer(
        with_influence(tmp_path / "run", state_memory=str(NEED)), run, 0, layout, [np.dtype("float64")], STEPS
    )
    assert record == {"kept": True, "bytes": NEED, "budget": NEED} and writer is not None
    writer.discard()


def test_auto_budget_reads_this_machine(tmp_path):
    from pipeline.io import states

    budget, memory, disk = states.auto_budget(tmp_path / "not-yet")  # a directory training has not made yet
    assert memory is not None and memory > 0 and disk is not None and disk > 0
    assert budget == int(min(memory, disk) * states.AUTO_SHARE)


def test_auto_through_the_pipeline_records_what_it_decided(ray_session, tmp_path):
    execute(with_influence(tmp_path / "auto", state_memory="auto"))  # a few KiB of states: they fit
    train, score, query = summaries(tmp_path / "auto")
    assert train["states"]["kept"] is True and train["states"]["budget"] >= train["states"]["bytes"]
    assert train["states"]["memory"] > 0 and train["states"]["disk"] > 0
    assert score["replayed"] is False and query["replayed"] is False
    reference = tmp_path / "replay"
    execute(with_influence(reference))
    assert summaries(reference)[1]["replayed"] is True  # the default is still to replay
    assert_same_scores(tmp_path / "auto", reference)
