"""The HTML report, built from a fake run directory (no TensorFlow, no Ray)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.report import write_report

REPO = Path(__file__).resolve().parents[2]
SIGN = (
    "Positive influence = harmful: more weight on the sample raises validation error; "
    "removing it changes validation error by about -influence."
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(
    root: Path,
    input_shape: tuple[int, ...] = (8, 8, 1),
    n: int = 40,
    seeds: tuple[int, ...] = (0, 1),
    methods: tuple[str, ...] = ("trajectory",),
    verify: bool = True,
    model: dict | None = None,
    aggregate: dict | None = None,
) -> tuple[Path, np.ndarray]:
    """A finished run with the files the report reads; returns (run_dir, x_train [n, d])."""
    rng = np.random.default_rng(0)
    d = int(np.prod(input_shape))
    x_train = rng.uniform(0, 1, size=(n, d)).astype(np.float32)
    labels = np.arange(n) % 4
    ranking = []
    for method in methods:
        influence = []
        for seed in seeds:
            scores = rng.normal(size=n) * 1e-3
            influence.append(scores)
            grad = rng.normal(size=(n, d)).astype(np.float32)
            table = pa.table({
                "sample_id": pa.array(np.arange(n), pa.int64()),
                "label": pa.array(labels, pa.int64()),
                "influence": pa.array(scores, pa.float64()),
                "input_grad": pa.FixedSizeListArray.from_arrays(pa.array(grad.ravel()), d),
                "input_grad_norm": pa.array(np.linalg.norm(grad, axis=1), pa.float64()),
                "train_loss": pa.array(rng.uniform(0, 2, n), pa.float64()),
            })
            folder = root / "scores" / f"method={method}" / f"seed={seed}"
            folder.mkdir(parents=True)
            pq.write_table(table, folder / "part-00000.parquet")
        mean = np.mean(influence, axis=0)
        order = np.argsort(-mean)
        ranking.append(pa.table({
            "method": pa.array([method] * n, pa.string()),
            "sample_id": pa.array(order, pa.int64()),
            "label": pa.array(labels[order], pa.int64()),
            "influence_mean": pa.array(mean[order], pa.float64()),
            "influence_std": pa.array(np.std(influence, axis=0)[order], pa.float64()),
            "n_seeds": pa.array(np.full(n, len(seeds)), pa.int64()),
            "input_grad_norm_mean": pa.array(rng.uniform(0, 1, n), pa.float64()),
            "train_loss_mean": pa.array(rng.uniform(0, 2, n), pa.float64()),
            "rank": pa.array(np.arange(1, n + 1), pa.int64()),
        }))
    pq.write_table(pa.concat_tables(ranking), root / "ranking.parquet")

    stages = {
        "train": {"seconds": 3.2, "seeds": {str(s): {"val_loss": 0.25, "val_accuracy": 0.95, "n_steps": 20, "seconds": 1.0} for s in seeds}},
        "score": {"seconds": 1.5},
    }
    if verify:
        (root / "verify").mkdir()
        pq.write_table(pa.table({
            "seed": pa.array([0, 0, 0, 0], pa.int64()),
            "sample_id": pa.array([1, 1, 7, 7], pa.int64()),
            "kind": pa.array(["eps", "x", "eps", "x"]),
            "predicted": pa.array([1.0, 2.0, 3.0, 4.0]),
            "finite_difference": pa.array([1.01, 2.0, 3.0, 4.2]),
            "relative_error": pa.array([0.01, 0.0, 1e-9, 0.05]),
        }), root / "verify" / "gradcheck.parquet")
        predicted = rng.normal(size=6) * 1e-3
        pq.write_table(pa.table({
            "seed": pa.array([0] * 6, pa.int64()),
            "sample_id": pa.array(np.arange(6), pa.int64()),
            "predicted_change": pa.array(predicted),
            "actual_change": pa.array(predicted * 1.1),
        }), root / "verify" / "loo.parquet")
        stages["verify"] = {
            "seconds": 9.0, "fd_step": 0.01,
            "gradcheck": {"eps": {"n": 2, "median_relative_error": 0.005, "max_relative_error": 0.01},
                          "x": {"n": 2, "median_relative_error": 0.025, "max_relative_error": 0.05}},
            "loo": {"n": 6, "pearson": 0.987654, "spearman": 0.912345, "kendall": 0.811111},
        }
    if aggregate is not None:
        stages["aggregate"] = {"seconds": 0.1, "seed_agreement": aggregate}
    manifest = {
        "config": {
            "data": {"source": "digits", "path": None},
            "model": model or {"name": "mlp", "hidden": [64], "activation": "tanh"},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "train": {"epochs": 10, "batch_size": 32, "seeds": list(seeds), "dtype": "float32", "loss": "cross_entropy"},
            "influence": {"method": methods[0], "objective": "cross_entropy"},
        },
        "config_hash": "abc123",
        "versions": {"numpy": np.__version__},
        "sign_convention": "influence = dE/d eps_i; positive = harmful.",
        "data": {"name": "fake", "n_train": n, "n_val": 10, "n_features": d, "input_shape": list(input_shape), "num_classes": 4},
        "stages": stages,
        "status": "succeeded",
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, x_train


def ranked_ids(run_dir: Path, method: str) -> np.ndarray:
    table = pq.read_table(run_dir / "ranking.parquet").to_pandas()
    return table[table.method == method].sort_values("rank")["sample_id"].to_numpy()


def listed_ids(page: str, role: str, method: str) -> list[int]:
    match = re.search(rf'data-list="{role}-{method}">[^:]*: ([0-9, ]+)</p>', page)
    assert match, f"no {role} list for {method}"
    return [int(s) for s in match.group(1).split(", ")]


def table_rows(markup: str) -> list[list[str]]:
    """Text of the body cells of the (first) table in markup, row by row."""
    body = markup[markup.index("<tbody>"):]
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)] for row in re.findall(r"<tr>(.*?)</tr>", body)]


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_image_run_report(tmp_path):
    run, x = make_run(tmp_path / "run", methods=("trajectory", "loss"))
    path = write_report(run, x, (8, 8, 1))
    assert path == run / "report" / "index.html" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["index.html"]  # no temporary file left behind
    page = path.read_text()

    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, re.I)
    assert "<script" not in page.lower()
    assert SIGN in page
    for text in ("fake", "mlp", "sgd (lr=0.1)", "float32", "cross_entropy", "succeeded", "3.2 s"):
        assert text in page

    for method in ("trajectory", "loss"):
        ids = ranked_ids(run, method)
        assert listed_ids(page, "harmful", method) == ids[:12].tolist()
        assert listed_ids(page, "helpful", method) == ids[::-1][:12].tolist()
        assert f"Method: {method}" in page

    # per method: harmful grid, helpful grid, histogram; verify: LOO scatter, gradcheck plot
    pngs = embedded_pngs(page)
    assert len(pngs) == 2 * 3 + 2
    assert all(p.startswith(PNG_SIGNATURE) for p in pngs)
    assert "Red = validation error rises if these pixels get brighter" in page
    assert "influence_std</th>" not in page  # image data: grids, not sample tables

    assert "pearson 0.9877, spearman 0.9123, kendall 0.8111" in page
    assert "n=6" in page
    gradcheck = re.search(r"<h3>Gradient check</h3>.*?</table>", page, re.S).group(0)
    rows = {row[0]: row for row in table_rows(gradcheck)}
    assert rows["eps"][2:] == ["2", "5.00e-03", "1.00e-02"] and rows["x"][2:] == ["2", "2.50e-02", "5.00e-02"]
    assert "not recorded" in page  # two seeds but no aggregate stage in the manifest


def test_per_class_table_counts_the_most_harmful(tmp_path):
    run, x = make_run(tmp_path / "run", seeds=(0,))
    page = write_report(run, x, (8, 8, 1)).read_text()
    table = pq.read_table(run / "ranking.parquet").to_pandas()
    top = table[table["rank"] <= 4]  # 10% of 40
    section = re.search(r"<h3>Per class</h3>.*?</table>", page, re.S).group(0)
    rows = table_rows(section)
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]
    for label, row in enumerate(rows):
        count = int((top.label == label).sum())
        assert row[1] == "10" and row[3] == "25.0%"
        assert row[4] == f"{100 * count / 4:.1f}%" and row[5] == str(count)
    assert "one seed: nothing to compare" in page


def test_seed_agreement_from_manifest(tmp_path):
    run, x = make_run(tmp_path / "run", aggregate={"trajectory": 0.8765})
    page = write_report(run, x, (8, 8, 1)).read_text()
    assert "0.8765" in page and "not recorded" not in page


def test_tabular_run_has_tables_not_grids(tmp_path):
    run, x = make_run(tmp_path / "run", input_shape=(5,))
    page = write_report(run, x, (5,)).read_text()
    ids = ranked_ids(run, "trajectory")
    assert len(embedded_pngs(page)) == 1 + 2  # histogram; verify scatter and gradcheck plot
    assert "pixels get brighter" not in page
    for role, expected in (("harmful", ids[:12]), ("helpful", ids[::-1][:12])):
        start = page.index(f"Most {role} training samples")
        table = page[start:page.index("</table>", start)]
        assert "<th class=\"num\">influence_std</th>" in table and "<th class=\"num\">train_loss_mean</th>" in table
        rows = table_rows(table)
        assert [int(row[1]) for row in rows] == expected.tolist()
        assert [int(row[0]) for row in rows] == (list(range(1, 13)) if role == "harmful" else list(range(40, 28, -1)))


def test_run_without_verify_omits_the_section(tmp_path):
    run, x = make_run(tmp_path / "run", verify=False)
    page = write_report(run, x, (8, 8, 1)).read_text()
    assert "verify stage" not in page and "Leave-one-out" not in page and "Gradient check" not in page
    assert len(embedded_pngs(page)) == 3


def test_config_text_is_escaped(tmp_path):
    model = {"name": "custom", "builder": "a<b>:f", "from_logits": True}
    run, x = make_run(tmp_path / "run", model=model, verify=False)
    page = write_report(run, x, (8, 8, 1)).read_text()
    assert "a&lt;b&gt;:f" in page
    assert "a<b>" not in page


def test_rewrite_replaces_the_report(tmp_path):
    run, x = make_run(tmp_path / "run", verify=False)
    first = write_report(run, x, (8, 8, 1)).read_text()
    second = write_report(run, x, (8, 8, 1))
    assert second.read_text() == first
    assert sorted(p.name for p in second.parent.iterdir()) == ["index.html"]


def test_features_must_match_input_shape(tmp_path):
    run, x = make_run(tmp_path / "run", verify=False)
    with pytest.raises(ValueError, match="input_shape"):
        write_report(run, x, (7, 7, 1))
    with pytest.raises(ValueError, match="sample_id"):
        write_report(run, x[:20], (8, 8, 1))
    assert not (run / "report" / "index.html").exists()


def test_no_tensorflow_or_ray_imported():
    code = "import sys, pipeline.report; bad = {'tensorflow', 'ray'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_render_script_without_chromium(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("<html></html>")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "render_report.py"), str(tmp_path)],
        capture_output=True, text=True, env={"PATH": str(tmp_path)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "apt-get install chromium" in result.stderr
