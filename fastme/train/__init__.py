"""Training and evaluation: :func:`train` runs the paper's protocol on any ``fastme.models`` model;
:mod:`fastme.train.checkpoint` saves, reads and finds its checkpoints and rebuilds trained models.

``fastme train`` (fastme/cli/train.py) is the command-line front end.
"""

from fastme.train.checkpoint import CheckpointError, load_checkpoint, load_trained
from fastme.train.config import TrainConfig
from fastme.train.metrics import log_loss, roc_auc
from fastme.train.trainer import Trainer, evaluate, print_summary, train

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "load_checkpoint",
    "load_trained",
    "log_loss",
    "print_summary",
    "roc_auc",
    "train",
]
