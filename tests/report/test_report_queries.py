"""The report's queries section: real runs with influence.queries (digits MLP, the two-input price regression),
predictions recomputed here in numpy from the stored checkpoints, and fake runs for groups and mixed inputs."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from test_pipeline_run import N, small_settings
from test_queries import query_settings
from test_report import make_run, mixed_data

from pipeline.config import (
    DataSettings,
    InfluenceSettings,
    ModelSettings,
    OptimizerSettings,
    OutputSettings,
    Settings,
    TaskSettings,
    TrainSettings,
)
from pipeline.data import Dataset
from pipeline.examples.make_data import main as make_data
from pipeline.io.layout import RunLayout
from pipeline.io.queries import TOP_SCHEMA
from pipeline.report import queries as report_queries
from pipeline.report import write_report
from pipeline.run import execute


def final_state(run: Path) -> dict[str, np.ndarray]:
    """Seed 0's last checkpoint: key -> array."""
    layout = RunLayout(run)
    steps = json.loads(layout.train_summary(0).read_text())["checkpoint_steps"]
    with np.load(layout.checkpoint(0, max(steps))) as archive:
        return {key: archive[key] for key in archive.files}


def queries_part(page: str) -> str:
    """The queries section: from its heading to the next section's."""
    begin = page.index("<h2>Queries")
    end = page.find("<h2>", begin + 1)
    return page[begin : end if end >= 0 else len(page)]


def first_table_rows(markup: str) -> list[list[str]]:
    """Text of the body cells of the first table in markup."""
    body = markup[markup.index("<tbody>") : markup.index("</tbody>")]
    return [
        [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", body)
    ]


def overview(part: str) -> list[list[str]]:
    return first_table_rows(part[part.index('data-list="queries"') :])


def shown_top(part: str, direction: str, query: int) -> list[int]:
    """The sample_ids listed for a query's direction: its id line (image inputs) or its table's sample_id column."""
    start = part.index(f'data-list="{direction}-query-{query}"')
    if part.rfind("<", 0, start) == part.rfind("<p ", 0, start):
        line = part[start : part.index("</p>", start)]
        return [int(s) for s in line.split(": ", 1)[1].split(", ")]
    return [int(row[1]) for row in first_table_rows(part[start:])]


def stored_top(run: Path, query: int, direction: str) -> list[int]:
    top = pq.read_table(run / "query_top.parquet").to_pandas()
    rows = top[(top.query_id == query) & (top.direction == direction)].sort_values("rank")
    return rows.sample_id.tolist()[: report_queries.TOP_SHOWN]


def test_classification_queries_misclassified_first_then_per_class_then_none_for_mean(
    ray_session, tmp_path, digits_subset
):
    data = digits_subset(N)
    execute(small_settings(tmp_path, stages=("train",)))
    state = final_state(tmp_path)  # the MLP of small_settings: Dense(8, tanh), Dense(10)
    hidden = np.tanh(data.x_val["x"].reshape(data.n_val, -1) @ state["trainable/0000"] + state["trainable/0001"])
    predicted = np.argmax(hidden @ state["trainable/0002"] + state["trainable/0003"], axis=1)
    wrong = predicted != data.y_val
    assert wrong.sum() >= 3 and (~wrong).sum() >= 5
    # Misclassified samples with larger ids than the correct ones: id order alone would show the correct ones first.
    ids = sorted(np.flatnonzero(~wrong)[:5].tolist() + np.flatnonzero(wrong)[-3:].tolist())
    settings = replace(
        query_settings(tmp_path, query_ids=tuple(ids), query_batch=8), stages=("train", "score", "aggregate", "report")
    )
    execute(settings)

    part = queries_part((tmp_path / "report" / "index.html").read_text())
    expected = (np.flatnonzero(wrong)[-3:].tolist() + np.flatnonzero(~wrong)[:5].tolist())[
        : report_queries.QUERIES_SHOWN
    ]
    rows = overview(part)
    assert [int(r[0]) for r in rows] == expected
    assert [(int(r[1]), int(r[2]), r[3]) for r in rows] == [
        (data.y_val[q], predicted[q], "misclassified" if wrong[q] else "correct") for q in expected
    ]
    assert re.findall(r'<h3 id="query-(\d+)">', part) == [str(q) for q in expected]
    assert "3 of the 8 are misclassified" in part and "influence = dE_q/d eps_i" in part
    first = expected[0]
    assert f"Label {data.y_val[first]}, predicted {predicted[first]} by seed 0's trained model: <strong" in part
    for q in expected:
        assert shown_top(part, "harmful", q) == stored_top(tmp_path, q, "harmful")
        assert shown_top(part, "helpful", q) == stored_top(tmp_path, q, "helpful")
    assert len(re.findall(r'<img [^>]*alt="query \d+, input x', part)) == len(expected)  # the query next to its samples

    # per_class on the same training: classes with the lowest accuracy first, with their size and accuracy.
    by_class = replace(
        settings,
        influence=replace(settings.influence, queries="per_class", query_ids=None, query_batch=10),
        output=replace(settings.output, overwrite=True),
    )
    execute(by_class)
    part = queries_part((tmp_path / "report" / "index.html").read_text())
    classes = np.arange(10)
    accuracy = np.array([np.mean(~wrong[data.y_val == c]) for c in classes])
    expected = classes[np.lexsort((classes, accuracy))][: report_queries.QUERIES_SHOWN].tolist()
    rows = overview(part)
    assert [int(r[0]) for r in rows] == expected
    assert [(int(r[1]), r[2]) for r in rows] == [(int((data.y_val == c).sum()), f"{accuracy[c]:.3f}") for c in expected]
    assert "per class" in part and "Left: the query" not in part
    assert shown_top(part, "harmful", expected[0]) == stored_top(tmp_path, expected[0], "harmful")

    # A run without queries in the same directory: the old query_top.parquet is not shown.
    execute(
        replace(
            settings,
            influence=replace(settings.influence, queries="mean", query_ids=None),
            stages=("aggregate", "report"),
        )
    )
    page = (tmp_path / "report" / "index.html").read_text()
    assert (tmp_path / "query_top.parquet").exists()
    assert "<h2>Queries" not in page and 'data-list="queries"' not in page and "<th>queries</th>" not in page


def test_regression_with_two_inputs_largest_error_first_with_value_tables(ray_session, tmp_path):
    data_file = tmp_path / "prices.npz"
    assert make_data(["prices", "--out", str(data_file)]) == 0
    run = tmp_path / "run"
    execute(
        Settings(
            task=TaskSettings(name="regression"),
            data=DataSettings(source="npz", path=str(data_file)),
            model=ModelSettings(name="custom", builder="pipeline.examples.seed_models:price_model"),
            optimizer=OptimizerSettings(name="adam", lr=1e-3),
            train=TrainSettings(epochs=2, batch_size=20, dtype="float64"),
            influence=InfluenceSettings(
                queries="per_sample", query_ids=tuple(range(10)), query_batch=10, query_top_k=5
            ),
            output=OutputSettings(dir=str(run)),
            stages=("train", "score", "aggregate", "report"),
        )
    )
    arrays = np.load(data_file)
    prices, hidden, y = arrays["x_val.reference_prices"][:10], arrays["x_val.hidden_inputs"][:10], arrays["y_val"][:10]
    state = final_state(run)  # output = (hidden @ kernel + bias + 1) * price
    predicted = ((hidden @ state["trainable/0000"] + state["trainable/0001"] + 1) * prices)[:, 0]
    error = np.abs(predicted - y)
    expected = np.lexsort((np.arange(10), -error))[: report_queries.QUERIES_SHOWN].tolist()

    part = queries_part((run / "report" / "index.html").read_text())
    rows = overview(part)
    assert [int(r[0]) for r in rows] == expected
    np.testing.assert_allclose([float(r[2]) for r in rows], predicted[expected], rtol=1e-3)  # shown to 4 digits
    np.testing.assert_allclose([float(r[3]) for r in rows], error[expected], rtol=1e-3)
    assert "largest |error| first" in part and "<img" not in part  # no image input
    first = expected[0]
    assert f"Target {y[first]:.4g}, predicted {predicted[first]:.4g} by seed 0's trained model" in part
    assert f'Input <code>reference_prices</code>: <span class="vec">{prices[first, 0]:.4g}</span>' in part
    table = part[part.index(f'data-list="harmful-query-{first}"') :]
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table[: table.index("</thead>")]) == [
        "rank",
        "sample_id",
        "target",
        "influence",
        "reference_prices",
        "hidden_inputs",
    ]
    for q in expected:
        assert shown_top(part, "harmful", q) == stored_top(run, q, "harmful")
        assert shown_top(part, "helpful", q) == stored_top(run, q, "helpful")


def test_run_without_queries_has_no_section(tmp_path):
    data = mixed_data()
    run = make_run(tmp_path / "run", data)
    page = write_report(run, data).read_text()
    assert "<h2>Queries" not in page and 'id="query-' not in page


def fake_queries_run(
    root: Path, data: Dataset, kind: str, query_ids: list[int], predicted: np.ndarray, monkeypatch
) -> tuple[Path, list[tuple]]:
    """A fake run (test_report.make_run, seeds 0 and 1) with influence.queries=kind, a query_top.parquet of 7 harmful
    and 7 helpful random samples per query, and `predicted` [V] as the model's classes; returns it and the query_top
    rows."""
    run = make_run(root, data)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["influence"].update(queries=kind, query_ids=None)
    (run / "manifest.json").write_text(json.dumps(manifest))
    rng = np.random.default_rng(5)
    rows = []
    for q in query_ids:
        for direction, sign in (("harmful", 1), ("helpful", -1)):
            ids = rng.choice(data.n_train, 7, replace=False)
            rows += [(q, rank, int(s), sign * (1 - rank / 10), direction) for rank, s in enumerate(ids, start=1)]
    table = pa.Table.from_pylist([dict(zip(TOP_SCHEMA.names, r)) for r in rows], schema=TOP_SCHEMA)
    pq.write_table(table.replace_schema_metadata({"queries": kind, "seeds": "0,1"}), run / "query_top.parquet")
    outputs = np.eye(int(predicted.max()) + 1)[predicted]
    monkeypatch.setattr(
        report_queries, "validation_outputs", lambda run_dir, manifest, dataset, seed, rows: outputs[rows]
    )
    return run, rows


def test_groups_of_a_mixed_input_run_lowest_accuracy_first(tmp_path, monkeypatch):
    """A group's size and accuracy, image figures for the image input (no query image), value tables for the other."""
    data = mixed_data()
    groups = np.arange(data.n_val) % 4  # 10 validation samples: groups of 3, 3, 2, 2
    grouped = replace(data, g_val=groups)
    predicted = data.y_val.copy()
    predicted[[2, 6, 3]] += 1  # wrong: both of group 2 (2, 6), one of group 3 (3, 7)
    run, rows = fake_queries_run(tmp_path / "run", data, "groups", [0, 1, 2, 3], predicted, monkeypatch)

    part = queries_part(write_report(run, grouped).read_text())
    assert [(int(r[0]), int(r[1]), r[2]) for r in overview(part)] == [
        (2, 2, "0.000"),
        (3, 2, "0.500"),
        (0, 3, "1.000"),
        (1, 3, "1.000"),
    ]
    assert "mean over seeds 0, 1" in part and "Input <code>image</code>" in part and "Left: the query" not in part
    assert (
        len(re.findall(r'<img [^>]*alt="query \d+, input image', part)) == 4 and "Input <code>meta</code>" not in part
    )
    assert (
        '<h3 id="query-2">Query 2: group 2</h3>' in part
        and "2 validation samples; seed 0's trained model classifies 0 of them correctly" in part
    )
    for g in range(4):
        assert (
            shown_top(part, "harmful", g)
            == [r[2] for r in rows if r[0] == g and r[4] == "harmful"][: report_queries.TOP_SHOWN]
        )
        assert (
            shown_top(part, "helpful", g)
            == [r[2] for r in rows if r[0] == g and r[4] == "helpful"][: report_queries.TOP_SHOWN]
        )
    table = part[part.index('data-list="harmful-query-2"') :]
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table[: table.index("</thead>")]) == [
        "rank",
        "sample_id",
        "label",
        "influence",
        "meta",
    ]


def test_per_sample_query_of_a_mixed_input_run_shows_its_image_and_values(tmp_path, monkeypatch):
    data = mixed_data()
    predicted = data.y_val.copy()
    predicted[7] = (predicted[7] + 1) % 4
    run, _ = fake_queries_run(tmp_path / "run", data, "per_sample", [3, 7, 9], predicted, monkeypatch)

    part = queries_part(write_report(run, data).read_text())
    assert [int(r[0]) for r in overview(part)] == [7, 3, 9]
    assert "1 of the 3 are misclassified" in part
    assert f"Label {data.y_val[7]}, predicted {predicted[7]} by seed 0's trained model: <strong" in part
    meta = ", ".join(f"{v:.4g}" for v in data.x_val["meta"][7])
    assert f'Input <code>meta</code>: <span class="vec">{meta}</span>' in part
    assert (
        len(re.findall(r'<img [^>]*alt="query \d+, input image', part)) == 3
        and "Left: the query, validation sample 7." in part
    )
