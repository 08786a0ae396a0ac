"""The training settings, written once: :class:`TrainConfig` holds the paper's defaults (Appendix
C.2), and the command lines generate their options from it (:func:`add_config_arguments`)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field


#: What ``precision`` may be: fp32, or bf16 autocast for the dense part (fastme/train/precision.py).
PRECISIONS = ("fp32", "bf16")
#: How a scoring model may hold its embedding tables (fastme/train/precision.py, store_tables).
TABLE_DTYPES = ("fp32", "bf16")


def _setting(
    default,
    help: str,
    *,
    flag: str | None = None,
    cli_default=dataclasses.MISSING,
    choices: tuple | None = None,
    kind: type | None = None,
):
    """A config field; ``help`` is its command-line help, ``flag`` its option name when it is not
    the field's name, ``cli_default`` a default of the command line only, ``choices`` the values
    it takes, ``kind`` its type when the default is None."""
    meta = {"help": help, "flag": flag, "cli_default": cli_default, "choices": choices}
    return field(default=default, metadata={**meta, "kind": kind})


@dataclass
class TrainConfig:
    """Training settings; the defaults are the paper's (Appendix C.2).

    Attributes:
        epochs: maximum number of epochs.
        batch_size: training batch size (2048).
        eval_batch_size: batch size for validation/test (None: ``batch_size``, as in the paper).
        lr, weight_decay: Adam's learning rate and coupled L2 weight decay.
        table_optimizer: how the embedding table is updated (fastme/train/table_optim.py):
            "adam" (the paper's: Adam over every parameter, exact), or a sparse optimizer that
            updates only the rows a batch touches: "lazy_adam", "rowwise_adagrad", "adagrad",
            "sgd" (the rest of the model keeps Adam).
        table_lr: the table optimizer's learning rate (None: ``lr``; a sparse optimizer only).
        patience: stop after this many consecutive epochs without a strictly better
            validation AUC.
        device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).
        seed: seeds dropout and (with ``shuffle``) the epoch order; the model's initialisation is
            seeded by whoever builds it (``fastme train`` seeds torch with the same value).
        split_seed: seed of the 8/1/1 split (the paper fixes it to 0 for every repeat).
        shuffle: reshuffle the training rows every epoch. Off by default, as in the paper's code,
            which trains every epoch in the single random order of the split.
        precision: "fp32", or "bf16": the forward pass and the loss under
            ``torch.autocast(device, torch.bfloat16)`` (matrix products in bfloat16 with float32
            accumulation); the weights, the tables, their gradients and the optimizer's state stay
            float32. It changes the trajectory, so a resumed run must keep it.
        out_dir: where checkpoints and results.json go (None: keep the best model in memory).
        resume: continue from ``out_dir/last.pt`` if it exists.
        progress: show progress bars; verbose: print one line per epoch.
    """

    epochs: int = _setting(100, "maximum epochs")
    batch_size: int = _setting(2048, "training batch size")
    eval_batch_size: int | None = _setting(
        None, "validation/test batch size (default: --batch-size)"
    )
    lr: float = _setting(1e-3, "Adam learning rate")
    weight_decay: float = _setting(1e-6, "Adam's coupled L2 weight decay (on every parameter)")
    table_optimizer: str = _setting(
        "adam",
        "the embedding table's optimizer: adam (the paper's, exact) or a sparse one that "
        "updates only the rows a batch touches (docs/training.md)",
        choices=("adam", "lazy_adam", "rowwise_adagrad", "adagrad", "sgd"),
    )
    table_lr: float | None = _setting(
        None, "learning rate of a sparse table optimizer (default: --lr)", kind=float
    )
    patience: int = _setting(3, "early-stopping patience (epochs without a better val AUC)")
    device: str = _setting("cpu", "cpu, cuda, cuda:N or auto", cli_default="auto")
    seed: int = _setting(0, "seeds initialisation and dropout (the split uses --split-seed)")
    split_seed: int = _setting(0, "seed of the 8/1/1 split")
    shuffle: bool = _setting(
        False, "reshuffle the training rows every epoch (the paper's code does not)"
    )
    precision: str = _setting(
        "fp32",
        "fp32, or bf16: torch.autocast to bfloat16 for the dense layers (tables, weights and "
        "optimizer state stay fp32)",
        choices=PRECISIONS,
    )
    out_dir: str | None = _setting(None, "output directory", flag="--out")
    resume: bool = _setting(False, "continue the run in --out from its last completed epoch")
    progress: bool = _setting(True, "no progress bars", flag="--no-progress")
    verbose: bool = _setting(True, "print one line per epoch")

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be positive, got {self.eval_batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        choices = _FIELDS["table_optimizer"].metadata["choices"]
        if self.table_optimizer not in choices:
            raise ValueError(
                f"table_optimizer must be one of {', '.join(choices)}, got {self.table_optimizer!r}"
            )
        if self.table_lr is not None and not self.table_lr > 0:
            raise ValueError(f"table_lr must be positive, got {self.table_lr!r}")
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)
        if self.resume and self.out_dir is None:
            raise ValueError("resume needs out_dir (where the run's last.pt is)")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Fields that define the optimisation trajectory; a resumed run must keep them.
TRAJECTORY_FIELDS = (
    "batch_size",
    "lr",
    "weight_decay",
    "seed",
    "split_seed",
    "shuffle",
    "precision",
    "table_optimizer",
    "table_lr",
)

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

#: Trajectory fields added after runs were recorded without them: missing means the default.
_LATER_FIELDS = ("precision", "table_optimizer", "table_lr")


def trajectory(config: dict) -> dict:
    """The trajectory settings of a config dict (:data:`TRAJECTORY_FIELDS`), leaving out the
    fields added later while they hold their defaults, so that a run recorded before they
    existed keeps its identity (and its default directory)."""
    return {
        k: v
        for k, v in config.items()
        if k in TRAJECTORY_FIELDS and not (k in _LATER_FIELDS and v == _FIELDS[k].default)
    }


def add_config_arguments(parser, names, **help_overrides) -> None:
    """Add one command-line option per :class:`TrainConfig` field in ``names``, with the field's
    default (or its command-line default) and help. Booleans that default to False become
    ``--flag``; ``progress`` becomes ``--no-progress``."""
    for name in names:
        f = _FIELDS[name]
        meta = f.metadata
        flag = meta["flag"] or "--" + name.replace("_", "-")
        default = f.default if meta["cli_default"] is dataclasses.MISSING else meta["cli_default"]
        text = help_overrides.get(name, meta["help"])
        if isinstance(f.default, bool):
            action = "store_false" if f.default else "store_true"
            parser.add_argument(flag, dest=name, action=action, help=text)
        elif default is None:
            kind = meta["kind"] or (int if name == "eval_batch_size" else str)
            parser.add_argument(flag, dest=name, type=kind, default=None, help=text)
        else:
            parser.add_argument(
                flag,
                dest=name,
                type=type(default),
                default=default,
                choices=meta["choices"],
                help=text,
            )


def config_options(args: argparse.Namespace) -> dict:
    """The :class:`TrainConfig` fields present in ``args``, as a dict."""
    return {name: getattr(args, name) for name in _FIELDS if hasattr(args, name)}
