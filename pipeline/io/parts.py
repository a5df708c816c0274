"""Score parts: how a method's scores are cut into shards, which parts a rerun must (re)compute, and the
schema metadata every part carries (its artifact key first)."""

from __future__ import annotations

import numpy as np

from pipeline import __version__
from pipeline.config import Settings
from pipeline.io.integrity import check_part, reconcile
from pipeline.io.layout import RunLayout
from pipeline.methods import REGISTRY

Shard = tuple[int, int, int]  # (shard number, first sample_id, end sample_id)


def whole(n_train: int) -> list[Shard]:
    return [(0, 0, n_train)]


def split(n_train: int, shard_size: int) -> list[Shard]:
    """(shard, first sample_id, end sample_id) covering range(n_train) once."""
    return [(i, start, min(start + shard_size, n_train)) for i, start in enumerate(range(0, n_train, shard_size))]


def parts_to_compute(
    layout: RunLayout, method: str, seed: int, shards: list[Shard], key: str, repair: bool = True
) -> list[Shard]:
    """The shards whose part is missing or bad. With `repair`, bad parts and parts of no current shard are
    renamed aside (one line printed for each), so that every sample ends up in exactly one part."""
    expected = {layout.score_part(method, seed, number): (number, start, stop) for number, start, stop in shards}
    check = lambda path, shard: check_part(path, np.arange(shard[1], shard[2]), key)  # noqa: E731
    return reconcile(layout.score_parts(method, seed), expected, check, "score", "shard", repair)


def part_metadata(settings: Settings, seed: int, key: str) -> dict[str, str]:
    """Schema metadata of a score part (tables.scores_table adds the sign convention and input shapes)."""
    method = REGISTRY[settings.influence.method]
    return {
        "artifact_key": key,
        "package_version": __version__,
        "config_hash": settings.result_hash(),
        "method": method.name,
        "method_meaning": method.description,
        "seed": str(seed),
        "task": settings.task.name,
        "objective": str(settings.influence.objective),
    }
