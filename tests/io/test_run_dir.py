"""A run directory is ours or it is refused: which directories are runs of ours (io.manifest), and removal and atomic
writes that never go through symbolic links (io.files). Pure Python, no TF or Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.io.files import atomic_path, first_link, remove, write_json
from pipeline.io.layout import RunLayout
from pipeline.io.manifest import foreign_entries, is_ours


def _outside(tmp_path: Path) -> Path:
    """A folder outside any run, holding a file that must survive everything below."""
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "precious.txt").write_text("precious")
    return outside


# --------------------------------------------------------------------------------------------- ownership


def test_missing_or_empty_dir_or_one_with_only_a_lock_is_no_foreign_dir(tmp_path):
    assert foreign_entries(RunLayout(tmp_path / "missing")) == []
    assert foreign_entries(RunLayout(tmp_path)) == []
    (tmp_path / ".lock").write_text("{}")
    (tmp_path / "hydra-multirun" / "0").mkdir(parents=True)  # made by Hydra before `python -m pipeline -m ...` runs
    assert foreign_entries(RunLayout(tmp_path)) == []


def test_dir_with_user_files_is_foreign_and_lists_them_sorted(tmp_path):
    for name in ("zeta.csv", "alpha.txt", ".hidden"):
        (tmp_path / name).write_text("x")
    (tmp_path / "scores").mkdir()
    assert foreign_entries(RunLayout(tmp_path)) == [".hidden", "alpha.txt", "scores", "zeta.csv"]


@pytest.mark.parametrize(
    "path,payload,ours",
    [
        ("manifest.json", {"config_hash": "0123", "sign_convention": "influence = dE/d eps_i", "status": "done"}, True),
        ("trajectory/_arguments.json", {"key": "0123456789abcdef", "arguments": {"data_fingerprint": "x"}}, True),
        ("manifest.json", {"name": "my-web-app", "version": "1.0"}, False),  # someone else's manifest.json
        ("manifest.json", ["config_hash", "sign_convention"], False),
        ("trajectory/_arguments.json", {"key": "k"}, False),
    ],
)
def test_a_run_of_ours_is_recognised_by_its_manifest_or_trajectory_arguments(tmp_path, path, payload, ours):
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(json.dumps(payload))
    (tmp_path / "notes.txt").write_text("mine")
    layout = RunLayout(tmp_path)
    assert is_ours(layout) is ours
    assert foreign_entries(layout) == ([] if ours else sorted(p.name for p in tmp_path.iterdir()))


def test_unparseable_manifest_is_not_ours(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    assert not is_ours(RunLayout(tmp_path))
    assert foreign_entries(RunLayout(tmp_path)) == ["manifest.json"]


# ----------------------------------------------------------------------------------------------- remove


def test_remove_a_link_to_a_folder_unlinks_it_and_leaves_the_target(tmp_path):
    outside = _outside(tmp_path)
    link = tmp_path / "run" / "scores"
    link.parent.mkdir()
    link.symlink_to(outside, target_is_directory=True)
    remove(link)
    assert not link.exists() and not link.is_symlink()
    assert (outside / "keep" / "precious.txt").read_text() == "precious"


def test_remove_a_folder_holding_a_link_does_not_follow_it(tmp_path):
    outside = _outside(tmp_path)
    report = tmp_path / "run" / "report"
    report.mkdir(parents=True)
    (report / "index.html").write_text("ours")
    (report / "figures").symlink_to(outside, target_is_directory=True)
    remove(report)
    assert not report.exists()
    assert (outside / "keep" / "precious.txt").read_text() == "precious"


def test_remove_files_dangling_links_and_missing_paths(tmp_path):
    (tmp_path / "ranking.parquet").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("ranking.parquet", "dangling", "never-existed"):
        remove(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- first_link


def test_first_link_finds_links_at_any_depth_without_following_them(tmp_path):
    outside = _outside(tmp_path)
    layout = RunLayout(tmp_path / "run")
    (layout.scores_dir("loss", 0)).mkdir(parents=True)
    (layout.score_part("loss", 0, 0)).write_text("part")
    assert first_link(layout.entries) is None
    deep = layout.scores_dir("loss", 1)
    deep.symlink_to(outside, target_is_directory=True)
    assert first_link(layout.entries) == deep
    deep.unlink()
    layout.report_dir.symlink_to(outside, target_is_directory=True)
    assert first_link(layout.entries) == layout.report_dir


# ------------------------------------------------------------------------------------------ atomic_path


@pytest.mark.parametrize("depth", ["parent", "grandparent"])
def test_atomic_write_refuses_to_write_through_a_linked_folder(tmp_path, depth):
    outside = _outside(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "report").symlink_to(outside, target_is_directory=True)
    target = run / "report" / "index.html" if depth == "parent" else run / "report" / "new" / "index.html"
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))
    with pytest.raises(ConfigError, match=rf"^{run}/report: is a symbolic link \(to {outside}\); a run never writes"):
        write_json(target, {"a": 1})
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before


def test_atomic_write_replaces_a_link_at_the_file_itself_not_its_target(tmp_path):
    outside = _outside(tmp_path)
    (tmp_path / "manifest.json").symlink_to(outside / "keep" / "precious.txt")
    with atomic_path(tmp_path / "manifest.json") as tmp:
        tmp.write_text("new")
    assert not (tmp_path / "manifest.json").is_symlink() and (tmp_path / "manifest.json").read_text() == "new"
    assert (outside / "keep" / "precious.txt").read_text() == "precious"


def test_atomic_write_creates_missing_real_folders(tmp_path):
    write_json(tmp_path / "a" / "b" / "c.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "b" / "c.json").read_text()) == {"x": 1}
