"""Training and evaluation: :func:`train` runs the paper's protocol on any ``fastme.models`` model.

``fastme train`` (fastme/train/cli.py) is the command-line front end.
"""

from fastme.train.config import TrainConfig
from fastme.train.metrics import log_loss, roc_auc
from fastme.train.trainer import Trainer, evaluate, load_checkpoint, print_summary, train

__all__ = ["TrainConfig", "Trainer", "evaluate", "load_checkpoint", "log_loss", "print_summary",
           "roc_auc", "train"]
