"""Fault injection for issue 16: a run directory is ours or it is refused, links inside a run are neither written
through nor followed on delete, every check comes before any claim, a reused pid's lock is stale, and Hydra's
composition errors are one line with exit 2."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from test_pipeline_run import N, small_settings

from pipeline import cli
from pipeline.config import InfluenceSettings, ModelSettings, with_task_defaults
from pipeline.errors import ConfigError
from pipeline.io.layout import RunLayout
from pipeline.io.lock import process_identity
from pipeline.run import CONFIG_DIR, execute


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below `root`, links not followed: ("dir",), ("link", target) or ("file", bytes, mtime)."""
    found: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = ("dir",)
            else:
                found[key] = ("file", path.read_bytes(), path.stat().st_mtime_ns)
    return found


def _user_files(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(f"user data in {name}\n".encode() + bytes(range(256)))
    return root


def _overwrite(settings, **changes):
    return replace(settings, output=replace(settings.output, overwrite=True), **changes)


def _options(group: str) -> str:
    """The options of a config group as Hydra lists them (sorted)."""
    return ", ".join(sorted(p.stem for p in Path(CONFIG_DIR, group).glob("*.yaml")))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------------------- foreign folders


@pytest.mark.parametrize(
    "files,overwrite,message",
    [
        (
            ("notes.txt", "data/x.csv"),
            False,
            r"holds files that are not a run of ours \(e\.g\. data\); empty it, choose another output\.dir, or set "
            r"output\.overwrite=true$",
        ),
        (
            ("report/index.html", "notes.txt"),
            False,
            r"holds report, which is not from a run of ours; move it away or choose another output\.dir "
            r"\(output\.overwrite=true never deletes",
        ),
        (("scores/mine.parquet", "ranking.parquet"), True, r"holds ranking\.parquet, which is not from a run of ours"),
        (("manifest.json",), True, r"holds manifest\.json, which is not from a run of ours"),
    ],
)
def test_foreign_folder_is_refused_and_left_byte_for_byte(tmp_path, files, overwrite, message):
    """Refused before Ray starts, the lock is taken or anything is written: not even a .lock appears."""
    root = _user_files(tmp_path / "mine", *files)
    before = _snapshot(root)
    settings = small_settings(root)
    with pytest.raises(ConfigError, match=rf"^output\.dir={root}: {message}"):
        execute(_overwrite(settings) if overwrite else settings)
    assert _snapshot(root) == before


def test_overwrite_into_a_foreign_folder_keeps_every_user_file(ray_session, tmp_path, capsys):
    """output.overwrite=true lets a run share a folder with user files that are not where a run writes; they are
    never removed, neither then nor when a later run replaces the trajectory."""
    root = _user_files(tmp_path / "mine", "notes.txt", "raw/images.bin", ".config")
    users = _snapshot(root)
    settings = small_settings(root, stages=("train", "score"))
    execute(_overwrite(settings))
    kept = f"[output] {root} was not a run of ours: its files (.config, notes.txt, raw) are left as they are"
    assert kept in capsys.readouterr().out
    assert (root / "_SUCCESS").exists()
    execute(settings)  # now a run of ours: resumes without overwrite
    execute(_overwrite(settings, optimizer=replace(settings.optimizer, lr=0.01)))  # replaces the trajectory
    assert json.loads(RunLayout(root).trajectory_arguments.read_text())["arguments"]["optimizer"]["lr"] == 0.01
    assert {k: v for k, v in _snapshot(root).items() if k in users} == users


def test_dotdot_in_output_dir_is_resolved_before_anything_is_created(ray_session, tmp_path):
    payload = execute(small_settings(f"{tmp_path}/a/../b", stages=("train",)))
    assert not (tmp_path / "a").exists()
    assert (tmp_path / "b" / "_SUCCESS").exists() and payload["config"]["output"]["dir"] == str(tmp_path / "b")


# ------------------------------------------------------------------------------------------------ links


def test_links_inside_a_run_are_neither_written_through_nor_followed_on_delete(ray_session, tmp_path):
    run = tmp_path / "run"
    settings = small_settings(run, stages=("train", "score", "aggregate", "report"))
    execute(settings)
    outside = _user_files(tmp_path / "published", "index.html", "keep/precious.txt")
    published = _snapshot(outside)

    # report/ replaced by a link to a folder elsewhere: a rerun would write report/index.html through it
    shutil.rmtree(run / "report")
    (run / "report").symlink_to(outside, target_is_directory=True)
    before = _snapshot(run)
    refused = rf"^{run}/report: is a symbolic link \(to {outside}\); a run never writes or deletes through links"
    with pytest.raises(ConfigError, match=refused):
        execute(settings)
    assert _snapshot(outside) == published and _snapshot(run) == before

    # scores/ as a link, and a new trajectory with overwrite: the old scores would be deleted through the link
    (run / "report").unlink()
    shutil.copytree(run / "scores", outside / "scores")
    shutil.rmtree(run / "scores")
    (run / "scores").symlink_to(outside / "scores", target_is_directory=True)
    published, before = _snapshot(outside), _snapshot(run)
    with pytest.raises(ConfigError, match=rf"^{run}/scores: is a symbolic link"):
        execute(_overwrite(settings, optimizer=replace(settings.optimizer, lr=0.01)))
    assert _snapshot(outside) == published and _snapshot(run) == before


# ------------------------------------------------------------------------------- checks before any claim


def test_bad_method_settings_on_a_finished_run_change_nothing(ray_session, tmp_path):
    settings = small_settings(tmp_path, stages=("train", "score"))
    execute(settings)
    before = _snapshot(tmp_path)
    bad = [
        (
            InfluenceSettings(method="sensitivity", output_weights=(1.0, 2.0)),
            r"^influence\.output_weights has 2 values; the model has 10 outputs$",
        ),
        (
            InfluenceSettings(method="tracin", objective="nowhere_xyz:objective"),
            r"^train\.loss=cross_entropy / influence\.objective=nowhere_xyz:objective: cannot import",
        ),
        (
            InfluenceSettings(method="tracin", objective="operator:not_"),
            r"^influence\.objective=operator:not_: not usable as a loss",
        ),
    ]
    for influence, message in bad:
        with pytest.raises(ConfigError, match=message):
            execute(replace(settings, influence=influence, stages=("score",)))
        with pytest.raises(ConfigError, match=message):  # overwrite removes nothing before the check either
            execute(_overwrite(settings, influence=influence))
    assert _snapshot(tmp_path) == before  # _SUCCESS, manifest and recorded arguments untouched


RAISING_BUILDER = "def build(input_shape, num_classes):\n    raise ValueError('no layer of width -3')\n"
SILENT_BUILDER = "def silent(input_shape, num_classes):\n    raise KeyError()\n"


@pytest.mark.parametrize(
    "builder,line",
    [
        ("raising_builder:build", "raised ValueError: no layer of width -3"),
        ("raising_builder:silent", "raised KeyError"),
    ],
)
def test_check_run_names_a_builder_that_raises(tmp_path, monkeypatch, digits_subset, builder, line):
    from pipeline.runtime.recipes import check_run

    (tmp_path / "raising_builder.py").write_text(RAISING_BUILDER + "\n\n" + SILENT_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = with_task_defaults(small_settings(tmp_path / "run", model=ModelSettings(name="custom", builder=builder)))
    with pytest.raises(ConfigError, match=rf"^model\.builder={builder} {line}$"):
        check_run(settings, digits_subset(N))


@pytest.mark.slow  # a real driver in a subprocess (Ray and TensorFlow start), about 30 s
def test_builder_that_raises_is_one_line_exit_2_and_leaves_the_run_alone(ray_session, tmp_path):
    run = tmp_path / "run"
    execute(small_settings(run, stages=("train", "score")))
    before = _snapshot(run)
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "raising_builder.py").write_text(RAISING_BUILDER)
    env = {**os.environ, "PYTHONPATH": str(modules)}
    command = [
        sys.executable,
        "-m",
        "pipeline",
        f"output.dir={run}",
        "model=custom",
        "model.builder=raising_builder:build",
        "output.overwrite=true",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    expected = "error: model.builder=raising_builder:build raised ValueError: no layer of width -3"
    assert _error_lines(result.stderr) == [expected], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert _snapshot(run) == before


# ------------------------------------------------------------------------------------------------- lock


def test_lock_left_with_a_pid_now_used_by_another_process_is_taken_over(ray_session, tmp_path):
    settings = small_settings(tmp_path, stages=("train",))
    other = subprocess.Popen(["sleep", "120"])
    try:
        stale = {"pid": other.pid, "host": socket.gethostname(), "started_at": "before", **process_identity(other.pid)}
        stale["process_start"] = "1"  # the pid's process started at another time: not the run that left the lock
        (tmp_path / ".lock").write_text(json.dumps(stale))
        assert execute(settings)["status"] == "succeeded"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    assert not (tmp_path / ".lock").exists()


# ------------------------------------------------------------------------------------------ Hydra typos


def _explain(config_name: str, *argv: str) -> str:
    """cli.explain for the error Hydra raises when composing `argv`."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None), pytest.raises(HydraException) as raised:
        compose(config_name, overrides=list(argv))
    return cli.explain(raised.value, CONFIG_DIR, config_name, list(argv))


INFLUENCE = _options("influence")


@pytest.mark.parametrize(
    "argv,line",
    [
        (["train.epoch=3"], "train.epoch: unknown setting; did you mean train.epochs?"),
        (["model=cnn", "modle.filters=[8]"], "modle.filters: unknown setting; did you mean model.filters?"),
        (["modle=cnn"], "modle: unknown config group; did you mean model?"),
        (["influence=foo"], f"influence=foo: unknown option; choose one of {INFLUENCE}"),
        (["influence=tracim"], f"influence=tracim: unknown option; did you mean tracin? (one of {INFLUENCE})"),
        (
            ["model.filters=[8]"],
            "model.filters: unknown setting for model=mlp "
            "(known: activation, augment, batch_norm, dropout, freeze, hidden, name)",
        ),
        (
            ["+train.epochs=3"],
            "+train.epochs=3: train.epochs is already set; drop the + (train.epochs=3) or write "
            "++train.epochs=3 to replace it",
        ),
        (["+model=cnn"], "+model=cnn: model is already in the defaults (model=mlp); write model=cnn without the +"),
        (
            ["experiment=mnist_cnn"],
            "experiment=mnist_cnn: experiment is not in the defaults; add it with +experiment=mnist_cnn",
        ),
        (["~trian"], "~trian: nothing to delete; unknown setting; did you mean train?"),
        (
            ["train.seeds=0,1"],
            "train.seeds=0,1: a comma makes several values (a sweep); write a list "
            "(train.seeds=[...]), quote the value, or add --multirun",
        ),
        (["hydra.verbos=true"], "hydra.verbos: unknown setting; did you mean hydra.verbose?"),
    ],
)
def test_composition_errors_name_the_key_and_the_nearest_valid_names(argv, line):
    assert _explain("config", *argv) == line


def test_evaluate_composition_errors_are_explained_too():
    line = _explain("evaluate", "evaluation.n_subset=3")
    assert line == "evaluation.n_subset: unknown setting; did you mean evaluation.n_subsets?"
    line = _explain("evaluate", "experiment=mnist")
    assert line == f"experiment=mnist: unknown option; did you mean mnist_cnn? (one of {_options('experiment')})"


def test_unparseable_override_is_one_line():
    line = cli.explain(HydraException("parse error"), CONFIG_DIR, "config", ["train.epochs=[3"])
    assert line.startswith("train.epochs=[3: not a valid override (no viable alternative at input '[3'; see https://")


@pytest.mark.parametrize(
    "module,argv,line",
    [
        ("pipeline", ["train.epoch=3"], "error: train.epoch: unknown setting; did you mean train.epochs?"),
        ("pipeline.evaluate", ["experiment=nope"], "error: experiment=nope: unknown option; choose one of digits_"),
    ],
)
def test_cli_composition_error_is_one_line_exit_2_and_writes_nothing(tmp_path, module, argv, line):
    command = [sys.executable, "-m", module, *argv, f"output.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith(line), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cfg_job_and_new_keys_with_plus_still_work(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--cfg", "job", "model=cnn", "+note=hello", "hydra.job.chdir=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "name: cnn" in result.stdout and "note: hello" in result.stdout
