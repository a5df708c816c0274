"""The run's HTML report: figures (matplotlib, Agg) and one self-contained page, RUN/report/index.html.

No TensorFlow or Ray here: the report is built only from a run's output files plus its Dataset (task,
targets and training inputs), which the outputs do not hold.
"""

from pipeline.report.html import write_report

__all__ = ["write_report"]
