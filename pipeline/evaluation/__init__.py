"""Evaluation of the scores against real retraining (`python -m pipeline.evaluate`, pipeline/evaluate.py).

- stats: the agreement figures (LDS, split-half reliability, removal effects), pure NumPy/SciPy;
- retrain: the Ray task bodies (retraining with sample weights, on a fresh seed);
- markdown: docs/results/<name>.md and docs/results.md from the stored rows.
"""
