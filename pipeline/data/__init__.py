"""Data sources (digits, synthetic, npz, parquet), validation split and checks.

Features are kept flat: x has shape [N, d] (float32), `input_shape` says how the model sees one sample
(e.g. (8, 8, 1) for digits). `sample_id` of a training sample is its row in x_train.
"""

from pipeline.data.dataset import Dataset, load_dataset

__all__ = ["Dataset", "load_dataset"]
