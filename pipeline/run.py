"""Entry point: the one @hydra.main. Config -> typed settings -> data -> lock -> artifact keys -> stages;
no math here.

    python -m pipeline [overrides...]        e.g. model=cnn train.seeds=[0,1,2] output.dir=runs/cnn

Nothing is written into output.dir, or removed from it, before the settings, the data, the directory itself
(empty, or a run of ours; no symbolic links where a run writes) and the model and the user's losses (one Ray
task) have been checked, the directory is locked, and the recorded arguments of its trajectory and scores
agree with this run's (io.arguments). A run only ever removes the entries of its own layout.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline import cli, cluster
from pipeline.config import Settings, settings_from_config
from pipeline.data import Dataset, describe, load_dataset
from pipeline.errors import ConfigError, DivergenceError, UserInputError
from pipeline.io import arguments
from pipeline.io.files import first_link, refuse_link, remove
from pipeline.io.fingerprint import fingerprint
from pipeline.io.layout import RunLayout
from pipeline.io.lock import RunLock, refuse_if_busy
from pipeline.io.manifest import Manifest, foreign_entries
from pipeline.models import WARPS
from pipeline.results import StageResult
from pipeline.stage_registry import STAGES, in_order
from pipeline.stages import queries
from pipeline.stages.context import RunContext

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
INTERRUPTED = "interrupted; rerun the same command to resume"


def data_fingerprint(dataset: Dataset) -> str:
    """The task, the model's input order and a content hash of every train and validation array, the sample weights
    among them when the data has any (io.fingerprint)."""
    arrays = {f"x_train.{k}": v for k, v in dataset.x_train.items()} | {
        f"x_val.{k}": v for k, v in dataset.x_val.items()
    }
    if dataset.w_train is not None:
        arrays["w_train"] = dataset.w_train
    order = ",".join(dataset.input_names)
    return f"{dataset.task}:{order}:{fingerprint(arrays | {'y_train': dataset.y_train, 'y_val': dataset.y_val})}"


def execute(settings: Settings) -> dict[str, Any]:
    """Run the configured stages (always in the order of the stage registry); returns the manifest payload.

    Raises UserInputError for bad settings or data, DivergenceError for a blow-up, KeyboardInterrupt on
    Ctrl-C; the manifest then says failed or interrupted and no _SUCCESS is written. Every check that can
    refuse the run comes before output.dir is locked, written or cleared (see the module docstring).
    """
    settings = _resolved(settings)
    layout = RunLayout(settings.output_dir)
    refuse_if_busy(layout.root)  # the quick checks first: a busy or foreign directory is refused at once
    _check_run_dir(layout, settings.output.overwrite)
    dataset = load_dataset(settings.data, settings.task.name)
    if settings.train.batch_size > dataset.n_train:
        raise ConfigError(
            f"train.batch_size={settings.train.batch_size}: larger than the {dataset.n_train} training samples"
        )
    if settings.influence.queries != "mean":
        queries.query_ids(settings, dataset)  # refuses ids the validation set does not have
    print(f"[data] {describe(dataset)}")
    warps = [name for name in settings.model.augment if name in WARPS]
    if warps and settings.influence.input_grad:
        print(
            f"[model] input_grad through model.augment={','.join(warps)} is approximate (TensorFlow's gradient of the "
            "image warp is the inverse warp); influence is exact"
        )
    data_key = data_fingerprint(dataset)
    ray_context = _check_in_worker(settings, dataset) if any(STAGES[s].ray for s in settings.stages) else None
    with RunLock(layout.root):
        kept = _check_run_dir(layout, settings.output.overwrite)  # again, now that no other run of ours can change it
        if kept:
            print(f"[output] {layout.root} was not a run of ours: its files ({', '.join(kept)}) are left as they are")
        context = _claim_artifacts(settings, dataset, data_key, layout)
        if ray_context is not None:
            context.task_options, context.dataset_ref = ray_context
        extra = {
            "data_fingerprint": data_key,
            "trajectory_key": context.trajectory_key,
            "score_key": context.score_key,
            "queries_key": context.queries_key,
            "data": dataset.summary(),
        }
        manifest = Manifest.open(layout, settings, extra)
        try:
            for stage in in_order(settings.stages):
                began = time.perf_counter()
                result: StageResult = stage.run(context)
                manifest.record_stage(stage.name, time.perf_counter() - began, result)
                for line in stage.lines(result):
                    print(line)
        except KeyboardInterrupt:
            manifest.finish("interrupted", error=INTERRUPTED)
            raise
        except BaseException as exc:
            manifest.finish("failed", error=one_line(exc))
            raise
        manifest.finish("succeeded")
        return manifest.payload


def _resolved(settings: Settings) -> Settings:
    """output.dir as an absolute path without `~`, `..` or symbolic links, resolved once before anything is created
    (so output.dir=a/../b never makes an `a/`, and every task writes to the same place)."""
    try:
        root = Path(settings.output.dir).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of symbolic links
        raise ConfigError(f"output.dir={settings.output.dir}: cannot resolve the path ({exc})") from None
    return replace(settings, output=replace(settings.output, dir=str(root)))


def _check_run_dir(layout: RunLayout, overwrite: bool) -> list[str]:
    """Refuse (ConfigError, one line) an output.dir that holds files and is not a run of ours, unless
    output.overwrite and none of those files is where a run writes (then they are kept, never removed: their
    names are returned), and one with a symbolic link where a run writes or removes. Reads only."""
    root = layout.root
    foreign = foreign_entries(layout)
    taken = [name for name in foreign if name in {p.name for p in layout.entries}]
    if taken:
        raise ConfigError(
            f"output.dir={root}: holds {taken[0]}, which is not from a run of ours; move it away or choose another "
            "output.dir (output.overwrite=true never deletes files a run did not write)"
        )
    if foreign and not overwrite:
        raise ConfigError(
            f"output.dir={root}: holds files that are not a run of ours (e.g. {foreign[0]}); empty it, choose another "
            "output.dir, or set output.overwrite=true"
        )
    link = first_link(layout.entries)
    if link is not None:
        refuse_link(link)
    return foreign


def _check_in_worker(settings: Settings, dataset: Dataset) -> tuple[dict[str, Any], Any]:
    """Start (or join) Ray and check, in one short task, what only a worker can (TensorFlow): the model builds, the
    user's losses work and the method's settings fit the model (runtime.recipes.check_run). Returns (task options,
    dataset reference) for the stages; a UserInputError of the task is raised as itself, not wrapped by Ray."""
    import ray
    from ray.exceptions import RayTaskError

    from pipeline.runtime import check_run

    cluster.connect(settings.cluster)
    options = cluster.task_options(settings.cluster, cluster.gpus_in_cluster())
    dataset_ref = ray.put(dataset)
    try:
        ray.get(ray.remote(check_run).options(**options).remote(settings, dataset_ref))
    except RayTaskError as exc:
        if isinstance(exc.cause, UserInputError):
            raise exc.cause from None
        raise
    return options, dataset_ref


def _claim_artifacts(settings: Settings, dataset: Dataset, data_key: str, layout: RunLayout) -> RunContext:
    """Check this run's arguments against those recorded in output.dir and record them (io.arguments).

    A new or replaced trajectory invalidates every score, verification, ranking and report derived from
    the old one; a replaced method invalidates only its own scores.
    """
    overwrite = settings.output.overwrite
    trajectory = arguments.trajectory_arguments(settings, data_key)
    derived = [*layout.derived_dirs, *layout.result_files, layout.success]
    reused = arguments.claim(
        layout.root,
        layout.trajectory_arguments,
        trajectory,
        "a trajectory",
        overwrite,
        [layout.trajectory_dir, *derived],
    )
    if not reused:
        for path in derived:
            remove(path)
    trajectory_key = arguments.key_of(trajectory)
    method = settings.influence.method
    scores = arguments.score_arguments(settings, trajectory_key)
    what = f"{method} scores"
    arguments.claim(layout.root, layout.score_arguments(method), scores, what, overwrite, [layout.method_dir(method)])
    queries_key = queries.claim(settings, dataset, layout, trajectory_key)
    return RunContext(settings, dataset, layout, trajectory_key, arguments.key_of(scores), queries_key=queries_key)


def one_line(exc: BaseException) -> str:
    """The first line of the underlying error (Ray wraps task errors; `cause` is the original)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


def _shutdown_ray() -> None:
    """Stop the Ray this process started (workers and agents), if any."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    settings = None
    try:
        settings = settings_from_config(cfg)
        payload = execute(settings)
    except (UserInputError, DivergenceError) as exc:
        print(f"error: {one_line(exc).split(': ', 1)[-1]}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    finally:
        _shutdown_ray()
    print(f"done: {payload['status']}; outputs in {settings.output_dir}")


def main() -> None:
    try:
        cli.run_hydra(_hydra_main, CONFIG_DIR, "config")
    except KeyboardInterrupt:  # a Ctrl-C outside the run itself (start-up, shutting Ray down)
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
