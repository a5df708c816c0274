"""influence.input_grad=false: no dE/dx_i anywhere (kernels, parts, ranking, report, top), the same influence, and
refused in one line where it cannot apply. Issue 17."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from test_pipeline_run import small_settings

from pipeline.config import InfluenceSettings, settings_from_config
from pipeline.errors import ConfigError
from pipeline.io.arguments import key_of, score_arguments
from pipeline.io.tables import NO_INPUT_GRAD, has_input_grads, input_grads
from pipeline.report.view import NO_INPUT_GRAD as REPORT_LINE
from pipeline.run import execute
from pipeline.top import main as top_main

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("train", "score", "aggregate", "report")


def make_settings(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return settings_from_config(compose(config_name="config", overrides=list(overrides)))


def test_input_grad_is_a_setting_of_the_methods_with_an_optional_input_gradient():
    for method in ("trajectory", "truncated", "lookahead", "tracin", "trak"):
        assert make_settings(f"influence={method}", "influence.input_grad=false").influence.input_grad is False
    for method in ("loss", "saliency", "sensitivity"):  # their scores are, or come with, the input gradient
        with pytest.raises(ConfigCompositionException, match=r"Could not override 'influence\.input_grad'"):
            make_settings(f"influence={method}", "influence.input_grad=false")
    with pytest.raises(ConfigError, match=r"^influence\.input_grad=false: not available for influence\.method=loss"):
        InfluenceSettings(method="loss", input_grad=False).validate("influence")


def test_input_grad_false_changes_the_config_hash_only_when_set():
    default, lean = make_settings(), make_settings("influence.input_grad=false")
    assert make_settings("influence.input_grad=true").result_hash() == default.result_hash()
    assert lean.result_hash() != default.result_hash()
    # not in the scores key: the influence is the same; the score stage recomputes parts of the other kind
    assert key_of(score_arguments(lean, "t")) == key_of(score_arguments(default, "t"))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["influence.queries=per_sample", "influence.query_input_grad=true"],
            r"^influence\.query_input_grad=true: needs influence\.input_grad=true "
            r"\(false computes no input gradient\)$",
        ),
        (
            ["stages=[train,score,verify]"],
            r"^influence\.input_grad=false: the verify stage checks trajectory's dE/d x_i against finite differences; "
            r"keep input_grad=true or drop verify from stages$",
        ),
    ],
)
def test_what_needs_input_gradients_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_settings("influence.input_grad=false", *overrides)
    make_settings("influence=tracin", "stages=[train,score,verify]", "influence.input_grad=false")  # no x gradcheck


def test_the_cli_refuses_it_with_exit_code_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            f"output.dir={tmp_path / 'run'}",
            "influence.input_grad=false",
            "influence.queries=per_sample",
            "influence.query_input_grad=true",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == (
        "error: influence.query_input_grad=true: needs influence.input_grad=true (false computes no input gradient)"
    )
    assert not (tmp_path / "run").exists()


def part(root: Path, method: str = "trajectory", shard: int = 0):
    return pq.read_table(root / "scores" / f"method={method}" / "seed=0" / f"part-{shard:05d}.parquet")


def test_a_run_without_input_gradients(ray_session, tmp_path, capsys):
    full, lean = tmp_path / "full", tmp_path / "lean"
    execute(small_settings(full, stages=STAGES))
    execute(small_settings(lean, stages=STAGES, influence=InfluenceSettings(input_grad=False)))

    with_grads, without = part(full), part(lean)
    assert not has_input_grads(without.schema) and input_grads(without) == {}
    assert without.column_names == ["sample_id", "label", "influence", "train_loss"]
    assert without.schema.metadata[b"input_grad"].decode() == NO_INPUT_GRAD
    assert "input_grad_norm" in with_grads.column_names and has_input_grads(with_grads.schema)
    np.testing.assert_array_equal(without["influence"].to_numpy(), with_grads["influence"].to_numpy())
    np.testing.assert_array_equal(without["train_loss"].to_numpy(), with_grads["train_loss"].to_numpy())

    ranking = pq.read_table(lean / "ranking.parquet")
    assert ranking["input_grad_norm_mean"].null_count == ranking.num_rows
    np.testing.assert_array_equal(
        ranking["influence_mean"].to_numpy(), pq.read_table(full / "ranking.parquet")["influence_mean"].to_numpy()
    )
    page = (lean / "report" / "index.html").read_text()
    assert REPORT_LINE in page and "Red = " not in page and "Red = " in (full / "report" / "index.html").read_text()
    capsys.readouterr()
    assert top_main(["--run", str(lean), "--k", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 3 and all(row.split()[6] == "-" for row in rows)

    # input_grad=true again in the same directory: the parts without input gradients are recomputed, not reused
    manifest = json.loads((lean / "manifest.json").read_text())
    execute(small_settings(lean, stages=("score", "aggregate")))
    assert "[score] seed=0: 1 trajectory part lacks input gradients; recomputing" in capsys.readouterr().out
    again = part(lean)
    np.testing.assert_array_equal(input_grads(again)["x"], input_grads(with_grads)["x"])
    assert json.loads((lean / "manifest.json").read_text())["config_hash"] != manifest["config_hash"]
    assert pq.read_table(lean / "ranking.parquet")["input_grad_norm_mean"].null_count == 0


@pytest.mark.parametrize("method", ["tracin", "trak"])
def test_sharded_and_features_methods_without_input_gradients(ray_session, tmp_path, method):
    """Scored next to trajectory scores with input gradients: the ranking holds both, the report shows both."""
    root = tmp_path / "run"
    execute(small_settings(root, stages=("train", "score")))
    influence = InfluenceSettings(method=method, shard_size=100, input_grad=False)
    execute(small_settings(root, stages=("score", "aggregate", "report"), influence=influence))
    parts = [part(root, method, shard) for shard in (0, 1)]
    assert all(not has_input_grads(p.schema) and "input_grad_norm" not in p.column_names for p in parts)
    assert sum(p.num_rows for p in parts) == 150
    ranking = pq.read_table(root / "ranking.parquet").to_pandas()
    assert ranking[ranking.method == method]["input_grad_norm_mean"].isna().all()
    assert ranking[ranking.method == "trajectory"]["input_grad_norm_mean"].notna().all()
    page = (root / "report" / "index.html").read_text()
    assert page.count(REPORT_LINE) == 1 and f"Method: {method}" in page and "Red = " in page
