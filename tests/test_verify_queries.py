"""Stage verify with per-query scores: gradcheck and leave-one-out of (query, training sample) pairs against
real retraining, on the small float64 digits run of test_queries (per_sample queries 0, 3, 7)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from test_pipeline_run import N
from test_queries import QUERY_IDS, query_settings

from pipeline import metrics
from pipeline.config import with_task_defaults
from pipeline.run import execute
from pipeline.runtime.jobs import Perturbation
from pipeline.runtime.verify import objective_after_training, retrained_objective, retrained_objectives
from pipeline.stages.verify import fd_step


def test_per_query_gradcheck_and_loo_agree_with_retraining(ray_session, tmp_path, digits_subset):
    base = query_settings(tmp_path, query_batch=2)  # queries 0, 3 in part 0 and 7 in part 1
    settings = replace(base, stages=("train", "score", "verify"), verify=replace(base.verify, smoothness=False))
    execute(settings)
    verify = json.loads((tmp_path / "manifest.json").read_text())["stages"]["verify"]

    # The mean checks come out of the same retrainings and still hold.
    assert (
        verify["gradcheck"]["eps"]["max_relative_error"] < 1e-6
        and verify["gradcheck"]["x"]["max_relative_error"] < 1e-5
    )
    assert verify["loo"]["n"] == 6 and verify["loo"]["pearson"] > 0.9
    mean_grad_ids = set(pq.read_table(tmp_path / "verify" / "gradcheck.parquet")["sample_id"].to_pylist())
    mean_loo_ids = set(pq.read_table(tmp_path / "verify" / "loo.parquet")["sample_id"].to_pylist())

    queries = verify["queries"]
    assert queries["queries"] == "per_sample" and queries["query_ids"] == list(QUERY_IDS)  # 3 queries: all checked
    stored = (
        pads.dataset(tmp_path / "queries", format="parquet", partitioning="hive")
        .to_table()
        .sort_by([("query_id", "ascending"), ("sample_id", "ascending")])
    )
    influence = stored["influence"].to_numpy().reshape(len(QUERY_IDS), N)
    largest = {int(np.argmax(np.abs(row))) for row in influence}

    gradcheck = pq.read_table(tmp_path / "verify" / "query_gradcheck.parquet")
    assert gradcheck.column_names == [
        "seed",
        "query_id",
        "sample_id",
        "kind",
        "predicted",
        "finite_difference",
        "relative_error",
    ]
    grad_ids = sorted(set(gradcheck["sample_id"].to_pylist()))
    # n_gradcheck=2 over 3 queries: the 2 random samples of the mean check plus each query's largest |influence|;
    # every chosen query is checked at every retrained sample.
    assert set(grad_ids) == mean_grad_ids | largest
    assert gradcheck.num_rows == len(QUERY_IDS) * len(grad_ids)
    np.testing.assert_array_equal(
        gradcheck["predicted"].to_numpy(),
        influence[[QUERY_IDS.index(q) for q in gradcheck["query_id"].to_pylist()], gradcheck["sample_id"].to_numpy()],
    )
    errors = gradcheck["relative_error"].to_numpy()
    print(f"query gradcheck: n={errors.size}, median relative error {np.median(errors):.2e}, max {errors.max():.2e}")
    assert np.max(errors) < 1e-6
    assert queries["gradcheck"]["eps"] == {
        "n": errors.size,
        "median_relative_error": float(np.median(errors)),
        "max_relative_error": float(errors.max()),
    }

    loo = pq.read_table(tmp_path / "verify" / "query_loo.parquet")
    assert loo.column_names == ["seed", "query_id", "sample_id", "predicted_change", "actual_change"]
    loo_ids = set(loo["sample_id"].to_pylist())
    assert mean_loo_ids <= loo_ids and largest <= loo_ids and loo.num_rows == len(QUERY_IDS) * len(loo_ids)
    predicted, actual = loo["predicted_change"].to_numpy(), loo["actual_change"].to_numpy()
    summary = queries["loo"]
    print(
        f"query leave-one-out: n={summary['n']}, pearson {summary['pearson']:.4f}, spearman "
        f"{summary['spearman']:.4f}, sign agreement {summary['sign_agreement']:.3f}"
    )
    assert summary["n"] == loo.num_rows and summary["pearson"] > 0.9 and summary["sign_agreement"] >= 0.9
    assert summary["pearson"] == metrics.correlations(predicted, actual)["pearson"]
    strongest = np.abs(predicted) >= np.quantile(np.abs(predicted), 0.5)
    assert np.all(
        np.sign(predicted[strongest]) == np.sign(actual[strongest])
    )  # removals with a clear signal move E_q as predicted

    # By hand, for query 3 at its largest-|influence| sample: retrain in this process and evaluate E_3 on a
    # validation set holding sample 3 alone (no per-sample vector, no query weights).
    q, k = 3, QUERY_IDS.index(3)
    i = int(np.argmax(np.abs(influence[k])))
    dataset = digits_subset(N)
    alone = replace(
        dataset, x_val={name: x[q : q + 1] for name, x in dataset.x_val.items()}, y_val=dataset.y_val[q : q + 1]
    )
    h = fd_step(settings)

    def objective(weight: float | None) -> float:
        eps = np.ones(N)
        if weight is not None:
            eps[i] = weight
        return objective_after_training(with_task_defaults(settings), alone, 0, eps)

    row = gradcheck.filter((pads.field("query_id") == q) & (pads.field("sample_id") == i))
    by_hand = metrics.central_difference(objective(1 + h), objective(1 - h), h)
    np.testing.assert_allclose(row["finite_difference"][0].as_py(), by_hand, rtol=1e-7)
    np.testing.assert_allclose(row["predicted"][0].as_py(), by_hand, rtol=1e-6)
    removed = loo.filter((pads.field("query_id") == q) & (pads.field("sample_id") == i))
    np.testing.assert_allclose(removed["actual_change"][0].as_py(), objective(0.0) - objective(None), rtol=1e-9)
    # A retraining serving the queries gives the mean checks exactly the E of the scalar retraining.
    resolved, removal = with_task_defaults(settings), Perturbation((i,), 0.0)
    mean, per_sample = retrained_objectives(resolved, dataset, 0, removal)
    assert mean == retrained_objective(resolved, dataset, 0, removal) and per_sample.shape == (dataset.n_val,)
    np.testing.assert_allclose(per_sample.mean(), mean, rtol=1e-12)

    # per_class in the same directory (only the queries are replaced): E_c is the mean over class c's
    # validation samples, checked by hand on a validation set holding exactly those samples.
    by_class = query_settings(tmp_path, queries="per_class", query_ids=(3, 5))
    by_class = replace(
        by_class, stages=("score", "verify"), verify=settings.verify, output=replace(by_class.output, overwrite=True)
    )
    execute(by_class)
    queries = json.loads((tmp_path / "manifest.json").read_text())["stages"]["verify"]["queries"]
    assert queries["queries"] == "per_class" and queries["query_ids"] == [3, 5]
    print(f"per_class query gradcheck: {queries['gradcheck']['eps']}; leave-one-out: {queries['loo']}")
    assert queries["gradcheck"]["eps"]["max_relative_error"] < 1e-6 and queries["loo"]["pearson"] > 0.9
    gradcheck = pq.read_table(tmp_path / "verify" / "query_gradcheck.parquet")
    class_rows = gradcheck.filter(pads.field("query_id") == 5)
    row = class_rows.slice(int(np.argmax(np.abs(class_rows["predicted"].to_numpy()))), 1)  # its strongest sample
    i = row["sample_id"][0].as_py()
    rows = dataset.y_val == 5
    alone = replace(dataset, x_val={name: x[rows] for name, x in dataset.x_val.items()}, y_val=dataset.y_val[rows])
    np.testing.assert_allclose(
        row["finite_difference"][0].as_py(),
        metrics.central_difference(objective(1 + h), objective(1 - h), h),
        rtol=1e-7,
    )
