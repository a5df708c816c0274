"""Data sources (digits, synthetic, mnist, npz, parquet), validation split and checks.

Inputs are a nest name -> [N, *shape] (one input is named "x"); targets are class ids or floats,
as the task says. `sample_id` of a training sample is its row in x_train.
"""

from pipeline.data.dataset import SINGLE_INPUT, Dataset, make_dataset
from pipeline.data.sources import describe, load_dataset

__all__ = ["SINGLE_INPUT", "Dataset", "describe", "load_dataset", "make_dataset"]
