"""Where every output of a run lives (DESIGN.md section 3). Paths only; no reading or writing."""

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

    def seed_dir(self, seed: int) -> Path:
        return self.root / "trajectory" / f"seed={seed}"

    def schedule(self, seed: int) -> Path:
        return self.seed_dir(seed) / "schedule.parquet"

    def checkpoint(self, seed: int, step: int) -> Path:
        return self.seed_dir(seed) / "checkpoints" / f"step={step}.npz"

    def train_summary(self, seed: int) -> Path:
        """Written last by a seed's training task: its presence marks the seed as trained."""
        return self.seed_dir(seed) / "_summary.json"

    def scores_dir(self, method: str, seed: int) -> Path:
        return self.root / "scores" / f"method={method}" / f"seed={seed}"

    def score_part(self, method: str, seed: int, shard: int) -> Path:
        return self.scores_dir(method, seed) / f"part-{shard:05d}.parquet"

    def score_summary(self, method: str, seed: int) -> Path:
        """Written after all parts of (method, seed): its presence marks them as complete."""
        return self.scores_dir(method, seed) / "_summary.json"

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
    def result_dirs(self) -> tuple[Path, ...]:
        """Everything a run writes besides the manifest; removed when output.overwrite replaces a run."""
        return (self.root / "trajectory", self.root / "scores", self.verify_dir, self.report_dir)

    @property
    def result_files(self) -> tuple[Path, ...]:
        return (self.ranking,)
