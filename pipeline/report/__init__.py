"""The run's HTML report: figures (matplotlib, Agg) and one self-contained page, RUN/report/index.html, laid out
by the Jinja2 templates in templates/ from the view model of view.py.

No Ray here: the report is built from a run's output files plus its Dataset (task, targets and inputs), which
the outputs do not hold. Only a run with influence.queries imports TensorFlow, to predict the queries' validation
samples with the first seed's final checkpoint (report.queries.validation_outputs); importing the package does not.
"""

from pipeline.report.html import write_report

__all__ = ["write_report"]
