"""The HTML report, built from fake run directories (no TensorFlow, no Ray)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data import Dataset, make_dataset
from pipeline.io.layout import RunLayout
from pipeline.io.tables import scores_table, target_array, write_table
from pipeline.report import write_report

REPO = Path(__file__).resolve().parents[2]
SIGN = (
    "Positive influence = harmful: more weight on the sample raises validation error; "
    "removing it changes validation error by about -influence."
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N = 40


def image_data(n: int = N) -> Dataset:
    """Digits-like: 8 x 8 x 1 images in [0, 16], four classes."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 16, size=(n + 10, 8, 8, 1))
    y = np.arange(n + 10) % 4
    return make_dataset("fake", "classification", {"x": x[:n]}, y[:n], {"x": x[n:]}, y[n:])


def regression_data(n: int = N, width: int = 1, shape: tuple[int, ...] = (1,)) -> Dataset:
    """One non-image input; targets [n] (width 1) or [n, width]."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 10, size=(n + 10, *shape))
    y = rng.normal(size=n + 10) if width == 1 else rng.normal(size=(n + 10, width))
    return make_dataset("quadratic", "regression", {"x": x[:n]}, y[:n], {"x": x[n:]}, y[n:])


def prices_data(n: int = N) -> Dataset:
    """Two inputs, reference_prices (1,) and hidden_inputs (2,), and a scalar regression target."""
    rng = np.random.default_rng(3)
    reference, hidden = rng.uniform(50, 150, size=(n + 10, 1)), rng.normal(size=(n + 10, 2))
    y = (hidden @ [0.05, -0.03] + 1.02) * reference[:, 0]
    split = lambda a: (a[:n], a[n:])  # noqa: E731
    (rt, rv), (ht, hv), (yt, yv) = split(reference), split(hidden), split(y)
    return make_dataset(
        "prices",
        "regression",
        {"reference_prices": rt, "hidden_inputs": ht},
        yt,
        {"reference_prices": rv, "hidden_inputs": hv},
        yv,
    )


def mixed_data(n: int = N) -> Dataset:
    """An image input (8, 8, 1) next to a non-image one (3,), classification."""
    rng = np.random.default_rng(4)
    image, meta = rng.uniform(0, 1, size=(n + 10, 8, 8, 1)), rng.normal(size=(n + 10, 3))
    y = np.arange(n + 10) % 4
    return make_dataset(
        "mixed",
        "classification",
        {"image": image[:n], "meta": meta[:n]},
        y[:n],
        {"image": image[n:], "meta": meta[n:]},
        y[n:],
    )


def make_run(
    root: Path,
    dataset: Dataset,
    seeds: tuple[int, ...] = (0, 1),
    methods: tuple[str, ...] = ("trajectory",),
    verify: bool = True,
    model: dict | None = None,
    aggregate: dict | None = None,
    status: str = "running",
) -> Path:
    """A run with the files the report reads, as the pipeline writes them while its report stage runs.

    Scores of every (method, seed) come in two parts written by io.tables.scores_table, next to a quarantined
    .part-00002.parquet.corrupt that is not a Parquet file; the verify stage checks eps and every input.
    """
    rng = np.random.default_rng(0)
    layout = RunLayout(root)
    n, task, targets = dataset.n_train, dataset.task, dataset.y_train
    ranking = []
    for method in methods:
        influence = []
        for seed in seeds:
            scores = rng.normal(size=n) * 1e-3
            influence.append(scores)
            grads = {name: rng.normal(size=(n, *shape)) for name, shape in dataset.input_shapes.items()}
            for shard, ids in enumerate(np.array_split(np.arange(n), 2)):
                table = scores_table(
                    ids,
                    targets[ids],
                    task,
                    scores[ids],
                    {k: g[ids] for k, g in grads.items()},
                    rng.uniform(0, 2, ids.size),
                    {},
                )
                write_table(table, layout.score_part(method, seed, shard))
            layout.score_part(method, seed, 2).with_name(".part-00002.parquet.corrupt").write_bytes(b"not parquet")
        mean = np.mean(influence, axis=0)
        order = np.argsort(-mean)
        target_name = "label" if task == "classification" else "target"
        ranking.append(
            pa.table(
                {
                    "method": pa.array([method] * n, pa.string()),
                    "sample_id": pa.array(order, pa.int64()),
                    "influence_mean": pa.array(mean[order], pa.float64()),
                    "influence_std": pa.array(np.std(influence, axis=0)[order], pa.float64()),
                    "n_seeds": pa.array(np.full(n, len(seeds)), pa.int64()),
                    "input_grad_norm_mean": pa.array(rng.uniform(0, 1, n), pa.float64()),
                    "train_loss_mean": pa.array(rng.uniform(0, 2, n), pa.float64()),
                    "rank": pa.array(np.arange(1, n + 1), pa.int64()),
                    target_name: target_array(targets[order], task),
                }
            )
        )
    pq.write_table(pa.concat_tables(ranking), layout.ranking)

    stages = {
        "train": {
            "seconds": 3.2,
            "seeds": {
                str(s): {
                    "val_loss": 0.25,
                    "val_accuracy": 0.95 if task == "classification" else float("nan"),
                    "n_steps": 20,
                    "seconds": 1.0,
                }
                for s in seeds
            },
        },
        "score": {"seconds": 1.5},
    }
    if verify:
        kinds = ["eps"] + (["x"] if len(dataset.input_names) == 1 else [f"x.{name}" for name in dataset.input_names])
        m = len(kinds)
        errors = np.array([0.01, 1e-9] + [0.0, 0.05] * (m - 1))
        layout.verify_dir.mkdir()
        pq.write_table(
            pa.table(
                {
                    "seed": pa.array([0] * 2 * m, pa.int64()),
                    "sample_id": pa.array([1, 7] * m, pa.int64()),
                    "kind": pa.array([kind for kind in kinds for _ in range(2)]),
                    "predicted": pa.array(np.ones(2 * m)),
                    "finite_difference": pa.array(1 + errors),
                    "relative_error": pa.array(errors),
                }
            ),
            layout.verify_dir / "gradcheck.parquet",
        )
        predicted = rng.normal(size=6) * 1e-3
        pq.write_table(
            pa.table(
                {
                    "seed": pa.array([0] * 6, pa.int64()),
                    "sample_id": pa.array(np.arange(6), pa.int64()),
                    "predicted_change": pa.array(predicted),
                    "actual_change": pa.array(predicted * 1.1),
                }
            ),
            layout.verify_dir / "loo.parquet",
        )
        gradcheck = {
            kind: {
                "n": 2,
                "median_relative_error": float(np.median(errors[2 * i : 2 * i + 2])),
                "max_relative_error": float(errors[2 * i : 2 * i + 2].max()),
            }
            for i, kind in enumerate(kinds)
        }
        stages["verify"] = {
            "seconds": 9.0,
            "fd_step": 0.01,
            "gradcheck": gradcheck,
            "loo": {"n": 6, "pearson": 0.987654, "spearman": 0.912345, "kendall": 0.811111},
        }
    if aggregate is not None:
        stages["aggregate"] = {"seconds": 0.1, "seed_agreement": aggregate}
    loss = "cross_entropy" if task == "classification" else "mse"
    manifest = {
        "config": {
            "task": {"name": task},
            "data": {"source": "digits", "path": None},
            "model": model or {"name": "mlp", "hidden": [64], "activation": "tanh"},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "train": {
                "epochs": 10,
                "batch_size": 32,
                "seeds": list(seeds),
                "dtype": "float32",
                "loss": loss,
                "checkpoint_every": None,
            },
            "influence": {"method": methods[0], "objective": loss, "output_weights": None},
        },
        "config_hash": "abc123",
        "versions": {"numpy": np.__version__},
        "sign_convention": "influence = dE/d eps_i; positive = harmful.",
        "data": dataset.summary(),
        "stages": stages,
        "status": status,
    }
    layout.manifest.write_text(json.dumps(manifest))
    return root


def ranked_ids(run_dir: Path, method: str) -> np.ndarray:
    table = pq.read_table(run_dir / "ranking.parquet").to_pandas()
    return table[table.method == method].sort_values("rank")["sample_id"].to_numpy()


def listed_ids(page: str, role: str, method: str) -> list[int]:
    match = re.search(rf'data-list="{role}-{method}">[^:]*: ([0-9, ]+)</p>', page)
    assert match, f"no {role} list for {method}"
    return [int(s) for s in match.group(1).split(", ")]


def table_cells(markup: str) -> list[list[str]]:
    """Markup of the body cells of the (first) table in markup, row by row."""
    body = markup[markup.index("<tbody>") :]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def text(markup: str) -> str:
    return re.sub(r"<[^>]+>", "", markup)


def table_rows(markup: str) -> list[list[str]]:
    """Text of the body cells of the (first) table in markup, row by row."""
    return [[text(cell) for cell in row] for row in table_cells(markup)]


def input_cell(cell: str) -> tuple[str, str]:
    """An input's cell of a sample table: (its values, its gradient), the two lines as text."""
    values, grads = cell.split("<br>")
    return text(values), text(grads)


def table_header(markup: str) -> list[str]:
    """Header cells of the (first) table in markup."""
    head = markup[markup.index("<thead>") : markup.index("</thead>")]
    return [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<th[^>]*>(.*?)</th>", head)]


def section(page: str, start: str) -> str:
    """From the first occurrence of start to the end of the next table."""
    begin = page.index(start)
    return page[begin : page.index("</table>", begin) + len("</table>")]


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def mean_grads(run_dir: Path, method: str, column: str) -> np.ndarray:
    """[n, d] flat input_grad column of every seed's parts, averaged over seeds (rows = sample_id)."""
    layout = RunLayout(run_dir)
    per_seed = []
    for folder in sorted(layout.method_dir(method).glob("seed=*")):
        table = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))]).sort_by("sample_id")
        per_seed.append(np.stack(table[column].to_numpy(zero_copy_only=False)).astype(np.float64))
    return np.mean(per_seed, axis=0)


def test_image_run_report(tmp_path):
    data = image_data()
    run = make_run(tmp_path / "run", data, methods=("trajectory", "loss"))
    path = write_report(run, data, final_status="succeeded")
    assert path == run / "report" / "index.html" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["index.html"]  # no temporary file left behind
    page = path.read_text()

    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, re.I)
    assert "<script" not in page.lower()
    assert SIGN in page
    for text in (
        "fake",
        "mlp",
        "sgd (lr=0.1)",
        "float32",
        "cross_entropy",
        "3.2 s",
        "classification",
        "x: 8 x 8 x 1 (image)",
    ):
        assert text in page
    assert re.search(r"<th>classes</th><td>4</td>", page)
    assert '<span class="status-succeeded">succeeded</span>' in page and 'status-running">' not in page
    assert table_header(section(page, "Training result per seed")) == [
        "seed",
        "val_loss",
        "val_accuracy",
        "steps",
        "seconds",
    ]

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
    assert "By target quantile" not in page

    assert "pearson 0.9877, spearman 0.9123, kendall 0.8111" in page
    assert "n=6" in page
    rows = {row[0]: row for row in table_rows(section(page, "<h3>Gradient check</h3>"))}
    assert set(rows) == {"eps", "x"}
    assert rows["eps"][2:] == ["2", "5.00e-03", "1.00e-02"] and rows["x"][2:] == ["2", "2.50e-02", "5.00e-02"]
    assert "not recorded" in page  # two seeds but no aggregate stage in the manifest


def test_manifest_status_shows_without_final_status(tmp_path):
    data = image_data()
    run = make_run(tmp_path / "run", data, verify=False)
    page = write_report(run, data).read_text()
    assert '<span class="status-running">running</span>' in page and 'status-succeeded">' not in page


def test_per_class_table_counts_the_most_harmful(tmp_path):
    data = image_data()
    run = make_run(tmp_path / "run", data, seeds=(0,))
    page = write_report(run, data).read_text()
    table = pq.read_table(run / "ranking.parquet").to_pandas()
    top = table[table["rank"] <= 4]  # 10% of 40
    rows = table_rows(section(page, "<h3>Per class</h3>"))
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]
    for label, row in enumerate(rows):
        count = int((top.label == label).sum())
        assert row[1] == "10" and row[3] == "25.0%"
        assert row[4] == f"{100 * count / 4:.1f}%" and row[5] == str(count)
    assert "one seed: nothing to compare" in page


def test_seed_agreement_from_manifest(tmp_path):
    data = image_data()
    run = make_run(tmp_path / "run", data, aggregate={"trajectory": 0.8765})
    page = write_report(run, data).read_text()
    assert "0.8765" in page and "not recorded" not in page


def test_regression_run_has_quantile_table_and_value_tables(tmp_path):
    data = regression_data()
    run = make_run(tmp_path / "run", data)
    page = write_report(run, data, final_status="succeeded").read_text()
    assert "regression" in page and re.search(r"<th>target width</th><td>1</td>", page)
    assert "x: 1<" in page and "(image)" not in page
    assert "Per class" not in page and "<th>classes</th>" not in page
    assert table_header(section(page, "Training result per seed")) == ["seed", "val_loss", "steps", "seconds"]
    assert len(embedded_pngs(page)) == 1 + 2  # histogram; verify scatter and gradcheck plot: no pictures of samples
    assert "pixels get brighter" not in page

    ranking = pq.read_table(run / "ranking.parquet").to_pandas().sort_values("rank")
    quantiles = section(page, "<h3>By target quantile</h3>")
    assert table_header(quantiles)[:4] == ["quantile", "target range", "count", "mean influence"]
    rows = table_rows(quantiles)
    assert [row[0] for row in rows] == ["Q1", "Q2", "Q3", "Q4", "Q5"]
    assert [int(row[2]) for row in rows] == [8] * 5
    lowest = ranking.nsmallest(8, "target")
    assert rows[0][1] == f"{lowest.target.min():.4g} to {lowest.target.max():.4g}"
    assert float(rows[0][3]) == pytest.approx(lowest.influence_mean.mean(), rel=1e-3)
    assert sum(int(row[6]) for row in rows) == 4  # the 10% most harmful of 40, spread over the bins

    grads = mean_grads(run, "trajectory", "input_grad")
    for role, expected in (("harmful", ranking.head(12)), ("helpful", ranking[::-1].head(12))):
        table = section(page, f"Most {role} training samples")
        assert (
            "Input <code>x</code>: the sample's values" in table and "input gradient dE/dx (mean over seeds)" in table
        )
        assert table_header(table) == [
            "rank",
            "sample_id",
            "target",
            "influence_mean",
            "influence_std",
            "input_grad_norm_mean",
            "train_loss_mean",
            "x",
        ]
        rows = table_rows(table)
        assert [int(row[1]) for row in rows] == expected.sample_id.tolist()
        assert [row[2] for row in rows] == [f"{t:.4g}" for t in expected.target]
        sid = int(rows[0][1])
        assert input_cell(table_cells(table)[0][7]) == (f"{data.x_train['x'][sid, 0]:.4g}", f"{grads[sid, 0]:+.2e}")
    assert listed_ids(page, "harmful", "trajectory") == ranking.sample_id[:12].tolist()


def test_wide_targets_use_their_norm(tmp_path):
    data = regression_data(width=3)
    run = make_run(tmp_path / "run", data, verify=False)
    page = write_report(run, data).read_text()
    assert re.search(r"<th>target width</th><td>3</td>", page)
    assert "Euclidean norm |target| of the 3 target values" in page
    assert table_header(section(page, "<h3>By target quantile</h3>"))[1] == "|target| range"
    ranking = pq.read_table(run / "ranking.parquet").sort_by("rank")
    first = ranking["target"][0].as_py()
    rows = table_rows(section(page, "Most harmful training samples"))
    assert rows[0][2] == "[" + ", ".join(f"{v:.4g}" for v in first) + "]"


def test_long_inputs_show_their_first_values(tmp_path):
    data = regression_data(shape=(20,))
    run = make_run(tmp_path / "run", data, verify=False)
    page = write_report(run, data).read_text()
    sid = int(ranked_ids(run, "trajectory")[0])
    values, grads = input_cell(table_cells(section(page, "Most harmful training samples"))[0][7])
    assert values == ", ".join(f"{v:.4g}" for v in data.x_train["x"][sid, :16]) + ", … (20 values)"
    assert grads.endswith(", … (20 values)") and grads.count(",") == 16


def test_two_input_run_names_both_inputs(tmp_path):
    data = prices_data()
    run = make_run(tmp_path / "run", data, methods=("tracin",))
    page = write_report(run, data).read_text()
    assert "reference_prices: 1<br>hidden_inputs: 2" in page and "<th>inputs</th>" in page
    assert len(embedded_pngs(page)) == 1 + 2

    ranking = pq.read_table(run / "ranking.parquet").to_pandas().sort_values("rank")
    table = section(page, "Most harmful training samples")
    assert "Inputs <code>reference_prices</code>, <code>hidden_inputs</code>" in table
    assert "dE/d(reference_prices), dE/d(hidden_inputs)" in table
    assert table_header(table)[7:] == ["reference_prices", "hidden_inputs"]
    reference = mean_grads(run, "tracin", "input_grad.reference_prices")
    hidden = mean_grads(run, "tracin", "input_grad.hidden_inputs")
    for row, sid in zip(table_cells(table), ranking.sample_id[:12]):
        assert int(row[1]) == sid
        assert input_cell(row[7]) == (f"{data.x_train['reference_prices'][sid, 0]:.4g}", f"{reference[sid, 0]:+.2e}")
        assert input_cell(row[8]) == (
            ", ".join(f"{v:.4g}" for v in data.x_train["hidden_inputs"][sid]),
            ", ".join(f"{v:+.2e}" for v in hidden[sid]),
        )

    rows = {row[0]: row for row in table_rows(section(page, "<h3>Gradient check</h3>"))}
    assert set(rows) == {"eps", "x.reference_prices", "x.hidden_inputs"}
    assert "input hidden_inputs along a random direction" in rows["x.hidden_inputs"][1]


def test_mixed_inputs_draw_only_the_image(tmp_path):
    data = mixed_data()
    run = make_run(tmp_path / "run", data, verify=False)
    page = write_report(run, data).read_text()
    assert "image: 8 x 8 x 1 (image)<br>meta: 3<" in page
    assert len(embedded_pngs(page)) == 2 + 1  # image grids of both ends, histogram
    assert "Input <code>image</code> (8 x 8 x 1). Each sample: the training image" in page
    assert "Input <code>meta</code> (" not in page  # no picture of the non-image input
    table = section(page, "Most harmful training samples")
    assert table_header(table)[7:] == ["meta"] and "input gradient dE/d(meta)" in table
    assert table.index("<img") < table.index("<table>")  # the grid comes first, then the table of the other input


def test_sensitivity_is_not_labelled_harmful(tmp_path):
    data = regression_data()
    run = make_run(tmp_path / "run", data, methods=("sensitivity",), verify=False)
    page = write_report(run, data).read_text()
    assert SIGN not in page and "most harmful" not in page and "helpful" not in page
    assert "No validation error is involved" in page and "output weights w" in page
    ids = ranked_ids(run, "sensitivity")
    assert listed_ids(page, "largest", "sensitivity") == ids[:12].tolist()
    assert listed_ids(page, "smallest", "sensitivity") == ids[::-1][:12].tolist()
    table = section(page, "Training samples with the largest weighted output")
    assert table_header(table)[-1] == "x" and "input gradient d(w·out)/dx (mean over seeds)" in table
    assert "share of 10% largest" in section(page, "<h3>By target quantile</h3>")


def test_run_without_verify_omits_the_section(tmp_path):
    data = image_data()
    run = make_run(tmp_path / "run", data, verify=False)
    page = write_report(run, data).read_text()
    assert "verify stage" not in page and "Leave-one-out" not in page and "Gradient check" not in page
    assert len(embedded_pngs(page)) == 3


def test_config_text_is_escaped(tmp_path):
    model = {"name": "custom", "builder": "a<b>:f", "from_logits": True}
    data = make_dataset(
        "a<b>",
        "regression",
        {"p<q>": np.ones((N, 1))},
        np.arange(N, dtype=float),
        {"p<q>": np.ones((5, 1))},
        np.zeros(5),
    )
    run = make_run(tmp_path / "run", data, model=model, verify=False)
    page = write_report(run, data).read_text()
    assert "a&lt;b&gt;:f" in page and "p&lt;q&gt;" in page
    assert "a<b>" not in page and "p<q>" not in page


def test_script_in_the_data_is_escaped(tmp_path):
    """A <script> in the data's names or the manifest's error shows as text, escaped wherever the page shows it."""
    evil = "<script>alert(1)</script>"
    data = make_dataset(
        f"d{evil}",
        "regression",
        {evil: np.ones((N, 1))},
        np.arange(N, dtype=float),
        {evil: np.ones((5, 1))},
        np.zeros(5),
    )
    run = make_run(tmp_path / "run", data, verify=False, status="failed")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["error"] = f"boom {evil}"
    (run / "manifest.json").write_text(json.dumps(manifest))
    page = write_report(run, data).read_text()
    assert "<script" not in page.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<th>dataset</th><td>d{escaped}</td>" in page and f"<th>input</th><td>{escaped}: 1</td>" in page
    assert f"failed</span> — boom {escaped}" in page
    table = section(page, "Most harmful training samples")
    assert f"Input <code>{escaped}</code>: the sample's values" in table and f"dE/d({escaped})" in table
    assert table_header(table)[-1] == escaped


class Elements(HTMLParser):
    """A page's start tags, their attributes and the text of its <style> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.style: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs
        self.in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.in_style:
            self.style.append(data)


def test_page_is_self_contained(tmp_path):
    """One file: the package's report.css inline, figures as data URIs, no scripts, nothing loaded from elsewhere."""
    data = image_data()
    run = make_run(tmp_path / "run", data, methods=("trajectory", "loss"))
    elements = Elements()
    elements.feed(write_report(run, data).read_text())
    loading = {"script", "link", "iframe", "frame", "object", "embed", "base", "audio", "video", "source"}
    assert not loading & set(elements.tags)
    names = [name for name, _ in elements.attributes]
    assert "href" not in names and not any(name.startswith("on") for name in names)
    sources = [value for name, value in elements.attributes if name in ("src", "srcset", "poster", "action", "data")]
    assert len(sources) == elements.tags.count("img") == 2 * 3 + 2
    assert all(value and value.startswith("data:image/png;base64,") for value in sources)
    css = resources.files("pipeline.report").joinpath("report.css").read_text()
    assert elements.tags.count("style") == 1 and "".join(elements.style).strip() == css.strip()
    assert "@import" not in css and "url(" not in css


def test_rewrite_replaces_the_report(tmp_path):
    data = image_data()
    run = make_run(tmp_path / "run", data, verify=False)
    first = write_report(run, data).read_text()
    second = write_report(run, data)
    assert second.read_text() == first
    assert sorted(p.name for p in second.parent.iterdir()) == ["index.html"]


def test_dataset_must_match_the_run(tmp_path):
    data = image_data()
    run = make_run(tmp_path / "run", data, verify=False)
    with pytest.raises(ValueError, match="no target column, which task=regression needs"):
        write_report(run, regression_data())
    with pytest.raises(ValueError, match="sample_id"):
        write_report(run, image_data(n=20))
    x = {"x": np.zeros((N, 7, 7, 1))}
    with pytest.raises(ValueError, match=r"input shapes \{'x': \(8, 8, 1\)\} differ"):
        write_report(
            run, make_dataset("fake", "classification", x, data.y_train, {"x": np.zeros((10, 7, 7, 1))}, data.y_val)
        )
    assert not (run / "report" / "index.html").exists()


def test_no_tensorflow_or_ray_imported():
    code = "import sys, pipeline.report; bad = {'tensorflow', 'ray'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_render_script_without_chromium(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("<html></html>")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "render_report.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "apt-get install chromium" in result.stderr


def test_the_optimizer_line_names_the_recipe():
    """Weight decay, clipping and the schedule with its parameters are on the report's optimizer line; settings that
    are off by default and off are not."""
    from pipeline.report.view import _optimizer_text

    recipe = {
        "name": "adamw",
        "lr": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "amsgrad": False,
        "weight_decay": 0.004,
        "clipnorm": None,
        "global_clipnorm": 1.0,
        "schedule": "warmup_cosine",
        "warmup_steps": 45,
        "alpha": None,
        "schedule_args": None,
    }
    assert _optimizer_text(recipe) == (
        "adamw (lr=0.001, beta_1=0.9, beta_2=0.999, epsilon=1.000e-07; weight_decay=0.004, global_clipnorm=1); "
        "schedule warmup_cosine (warmup_steps=45)"
    )
    assert _optimizer_text({"name": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False}) == "sgd (lr=0.1)"
