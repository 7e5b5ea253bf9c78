"""Stage A and B of the method: label shards (features + teacher targets) and compressor training."""

from .labels import LabelError, LabelSegment, build_batch, build_inputs, label_dataset, load_label_dir, read_records
from .train import TrainArguments, train_compressor

__all__ = [
    "LabelError",
    "LabelSegment",
    "TrainArguments",
    "build_batch",
    "build_inputs",
    "label_dataset",
    "load_label_dir",
    "read_records",
    "train_compressor",
]
