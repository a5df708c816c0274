"""Where every output of a run lives (docs/design.md, "Outputs"). Paths only; no reading or writing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def success(self) -> Path:
        return self.root / "_SUCCESS"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def trajectory_dir(self) -> Path:
        return self.root / "trajectory"

    @property
    def trajectory_arguments(self) -> Path:
        """What the recorded training runs were computed from (io.arguments)."""
        return self.trajectory_dir / "_arguments.json"

    def method_dir(self, method: str) -> Path:
        return self.root / "scores" / f"method={method}"

    def score_arguments(self, method: str) -> Path:
        return self.method_dir(method) / "_arguments.json"

    def seed_dir(self, seed: int) -> Path:
        return self.root / "trajectory" / f"seed={seed}"

    def schedule(self, seed: int) -> Path:
        return self.seed_dir(seed) / "schedule.parquet"

    def checkpoint(self, seed: int, step: int) -> Path:
        return self.seed_dir(seed) / "checkpoints" / f"step={step}.npz"

    def states(self, seed: int) -> Path:
        """Every state of the seed's run, kept from training with influence.state_memory (io.states)."""
        return self.seed_dir(seed) / "states.npy"

    def train_summary(self, seed: int) -> Path:
        """Written last by a seed's training task: its presence marks the seed as trained."""
        return self.seed_dir(seed) / "_summary.json"

    def scores_dir(self, method: str, seed: int) -> Path:
        return self.method_dir(method) / f"seed={seed}"

    def score_part(self, method: str, seed: int, shard: int) -> Path:
        return self.scores_dir(method, seed) / f"part-{shard:05d}.parquet"

    def score_parts(self, method: str, seed: int) -> list[Path]:
        """The part files present for (method, seed) (quarantined *.corrupt files excluded)."""
        return sorted(self.scores_dir(method, seed).glob("part-*.parquet"))

    def score_summary(self, method: str, seed: int) -> Path:
        """Timings of the last scoring of (method, seed); the parts themselves are what counts."""
        return self.scores_dir(method, seed) / "_summary.json"

    @property
    def queries_root(self) -> Path:
        return self.root / "queries"

    def queries_method_dir(self, method: str) -> Path:
        return self.queries_root / f"method={method}"

    def query_arguments(self, method: str) -> Path:
        """What a method's per-query scores were computed from (io.arguments)."""
        return self.queries_method_dir(method) / "_arguments.json"

    def queries_dir(self, method: str, seed: int) -> Path:
        return self.queries_method_dir(method) / f"seed={seed}"

    def query_part(self, method: str, seed: int, batch: int) -> Path:
        """The long-format part of one query batch (query_id, sample_id, influence[, input_grad])."""
        return self.queries_dir(method, seed) / f"part-{batch:05d}.parquet"

    def query_parts(self, method: str, seed: int) -> list[Path]:
        """The query parts present for (method, seed) (quarantined *.corrupt files excluded)."""
        return sorted(self.queries_dir(method, seed).glob("part-*.parquet"))

    def query_summary(self, method: str, seed: int) -> Path:
        return self.queries_dir(method, seed) / "_summary.json"

    @property
    def query_top(self) -> Path:
        """Per query: its most harmful and most helpful training samples (stage aggregate)."""
        return self.root / "query_top.parquet"

    @property
    def ranking(self) -> Path:
        return self.root / "ranking.parquet"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def verify_dir(self) -> Path:
        return self.root / "verify"

    @property
    def features_root(self) -> Path:
        """Projected-gradient features of the features methods (trak; io.features)."""
        return self.root / "features"

    @property
    def derived_dirs(self) -> tuple[Path, ...]:
        """Folders computed from the trajectory; removed when a new trajectory replaces it."""
        return (self.root / "scores", self.features_root, self.queries_root, self.verify_dir, self.report_dir)

    @property
    def result_files(self) -> tuple[Path, ...]:
        """Files computed from the trajectory (besides _SUCCESS); removed with derived_dirs."""
        return (self.ranking, self.query_top)

    @property
    def hydra_multirun(self) -> Path:
        """Hydra's folder for `python -m pipeline -m ...` (conf/config.yaml hydra.sweep.dir),
        made before a run starts."""
        return self.root / "hydra-multirun"

    @property
    def entries(self) -> tuple[Path, ...]:
        """Everything a run writes directly in root (features/: io.features): the only names it writes or removes."""
        ours = (self.lock, self.manifest, self.success, self.trajectory_dir, self.features_root)
        return (*ours, *self.derived_dirs, *self.result_files)
