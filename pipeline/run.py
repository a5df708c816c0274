"""Entry point: the one @hydra.main. Config -> typed settings -> stages, in order; no math here.

    python -m pipeline [overrides...]        e.g. model=cnn train.seeds=[0,1,2] output.dir=runs/cnn
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline import cluster
from pipeline.config import STAGES, Settings, settings_from_config
from pipeline.data import load_dataset
from pipeline.errors import ConfigError, DivergenceError, UserInputError
from pipeline.io.layout import RunLayout
from pipeline.io.manifest import Manifest

RAY_STAGES = ("train", "score", "verify")
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def execute(settings: Settings) -> dict[str, Any]:
    """Run the configured stages (always in the order of config.STAGES); returns the manifest payload.

    Raises UserInputError for bad settings or data and DivergenceError for NaN/inf; the manifest then
    says "failed" and no _SUCCESS is written.
    """
    layout = RunLayout(settings.output_dir)
    dataset = load_dataset(settings.data)
    if settings.train.batch_size > dataset.n_train:
        raise ConfigError(f"train.batch_size={settings.train.batch_size}: larger than the {dataset.n_train} training samples")
    manifest = Manifest.open(layout, settings)
    try:
        manifest.record_data(dataset.summary())
        dataset_ref, options = None, {}
        if set(settings.stages) & set(RAY_STAGES):
            import ray

            cluster.connect(settings.cluster)
            options = cluster.task_options(settings.cluster, cluster.gpus_in_cluster())
            dataset_ref = ray.put(dataset)
        for stage in (s for s in STAGES if s in settings.stages):
            began = time.perf_counter()
            details = _run_stage(stage, settings, dataset, dataset_ref, options)
            manifest.record_stage(stage, time.perf_counter() - began, details)
            _print_stage(stage, details)
    except BaseException as exc:
        manifest.finish("failed", error=one_line(exc))
        raise
    manifest.finish("succeeded")
    return manifest.payload


def _run_stage(stage: str, settings: Settings, dataset: Any, dataset_ref: Any, options: dict[str, Any]) -> dict[str, Any]:
    from pipeline.stages import aggregate, report, score, train, verify

    if stage == "train":
        return {"seeds": train.run(settings, dataset_ref, options)}
    if stage == "score":
        return {"method": settings.influence.method, "seeds": score.run(settings, dataset_ref, dataset.n_train, options)}
    if stage == "verify":
        return verify.run(settings, dataset_ref, dataset, options)
    if stage == "aggregate":
        return aggregate.run(settings, dataset.n_train)
    return report.run(settings, dataset)


def _print_stage(stage: str, details: dict[str, Any]) -> None:
    if stage == "train":
        for seed, s in details["seeds"].items():
            print(f"[train] seed={seed}: {s['n_steps']} steps in {s['seconds']:.1f}s, val_loss={s['val_loss']:.4f}, val_accuracy={s['val_accuracy']:.3f}")
    elif stage == "score":
        for seed, s in details["seeds"].items():
            timing = f" in {s['seconds']:.1f}s ({s['seconds_over_training']:.2f}x training), E={s['objective_value']:.5f}" if "seconds" in s else f" in {s['parts']} parts"
            print(f"[score] seed={seed}: {details['method']} on {s['n_samples']} samples{timing}")
    elif stage == "aggregate":
        agreement = ", ".join(f"{m}: {'one seed' if v is None else f'{v:.3f}'}" for m, v in details["seed_agreement"].items())
        print(f"[aggregate] {details['rows']} ranked rows; seed agreement (Spearman) {agreement}")
    elif stage == "report":
        print(f"[report] {details['path']}")
    else:
        for kind, g in details["gradcheck"].items():
            print(f"[verify] gradcheck {kind}: median relative error {g['median_relative_error']:.2e}, max {g['max_relative_error']:.2e} (n={g['n']}, h={details['fd_step']:g})")
        loo = details["loo"]
        print(f"[verify] leave-one-out (n={loo['n']}): pearson {loo['pearson']:.4f}, spearman {loo['spearman']:.4f}, kendall {loo['kendall']:.4f}")


def one_line(exc: BaseException) -> str:
    """The first line of the underlying error (Ray wraps task errors; `cause` is the original)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        settings = settings_from_config(cfg)
        payload = execute(settings)
    except (UserInputError, DivergenceError) as exc:
        print(f"error: {one_line(exc).split(': ', 1)[-1]}", file=sys.stderr)
        sys.exit(2)
    print(f"done: {payload['status']}; outputs in {settings.output_dir}")


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _hydra_main()


if __name__ == "__main__":
    main()
