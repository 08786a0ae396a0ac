"""The training loop of the paper (Appendix C.2) for any ``fastme.models`` model.

8/1/1 random split with seed 0, Adam (lr 1e-3, coupled L2 weight decay 1e-6 on every parameter,
as the reference code's ``torch.optim.Adam``; the embedding table's gradient is sparse and
``table_optimizer`` may replace Adam for the table, see table_optim.py), batch 2048,
BCE-with-logits plus the model's regularisation loss, validation AUC and log loss after every
epoch, early stopping on validation AUC (strict improvement, patience 3), and the test score of
the best checkpoint.

Files in ``out_dir``: ``last.pt`` (after every epoch: model, optimizer, epoch, config and the
trainer's state, enough to resume), ``best.pt`` (the best epoch's model and optimizer) and
``results.json``. Both checkpoints are built by :meth:`Trainer.checkpoint`.

The trainer knows nothing of the analysis: measurements of the model (such as the per-field
information abundance that ``fastme train`` records) come in through the ``on_epoch`` and
``on_result`` callbacks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fastme._atomic import make_dirs, write_text
from fastme._json import json_default
from fastme._lock import file_lock
from fastme.data.dataset import CTRData
from fastme.ops import available_backends
from fastme.train.batches import iterate_batches
from fastme.train.checkpoint import (
    BEST,
    LAST,
    LOCK,
    RESULTS,
    CheckpointError,
    load_checkpoint,
    save,
)
from fastme.train.config import TRAJECTORY_FIELDS, TrainConfig, trajectory
from fastme.train.metrics import log_loss_from_logits, roc_auc
from fastme.train.precision import autocast
from fastme.train.table_optim import ModelOptimizer

#: What a run's ``info`` says about the model; resuming with other values is refused.
_MODEL_INFO = ("model", "mode", "scale", "model_options")


class TrainingWarning(RuntimeWarning):
    """The run finished but its numbers are suspect (e.g. it diverged)."""


#: ``callback(model, entry) -> dict | None``: extra entries for an epoch's history record
#: (``on_epoch``) or for the results (``on_result``, called with the tested best model).
Callback = Callable[[torch.nn.Module, dict], "dict | None"]


def resolve_device(spec: str) -> torch.device:
    """ "auto" -> CUDA when available else CPU; anything else is checked to exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {spec!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {spec!r}")
    return device


# ---- evaluation ---------------------------------------------------------------------------------


def evaluate(
    model, data: CTRData, device: torch.device, batch_size: int = 2048, progress: bool = False
) -> dict:
    """AUC and log loss of ``model`` (eval mode) on ``data``."""
    if len(data) == 0:
        raise ValueError(f"cannot evaluate on {data.name}: it has no rows")
    rows = np.sort(data.row_numbers())  # the order does not matter here; sorted reads are faster
    return scores(data, rows, predict_logits(model, data, rows, device, batch_size, progress))


@torch.no_grad()
def predict_logits(
    model,
    data: CTRData,
    rows: np.ndarray,
    device: torch.device,
    batch_size: int = 2048,
    progress: bool = False,
) -> np.ndarray:
    """The logits of ``model`` (eval mode) for ``rows`` of ``data``, in that order (float32)."""
    from tqdm.auto import tqdm

    model.eval()
    logits = torch.empty(len(rows), dtype=torch.float32, device=device)
    pos = 0
    with tqdm(
        total=len(rows),
        unit="sample",
        unit_scale=True,
        desc=f"eval {data.name}",
        disable=not progress,
        leave=False,
        mininterval=0.5,
    ) as bar:
        for xb, _ in iterate_batches(data, rows, batch_size, device, sort_rows=False):
            logits[pos : pos + len(xb)] = model(xb).float()
            pos += len(xb)
            bar.update(len(xb))
    return logits.cpu().numpy()


def scores(data: CTRData, rows: np.ndarray, z: np.ndarray) -> dict:
    """AUC and log loss of the logits ``z`` of ``rows`` of ``data``."""
    labels = data.base_arrays()[1][rows]
    if not np.isfinite(z).all():
        raise FloatingPointError(f"the model produced non-finite logits on {data.name}")
    try:
        auc = roc_auc(labels, z)
    except ValueError as exc:
        raise ValueError(f"{data.name}: {exc}") from exc
    return {"auc": auc, "logloss": log_loss_from_logits(labels, z)}


def _epoch_seed(seed: int, epoch: int) -> int:
    # Each epoch's randomness depends only on (seed, epoch), so a resumed run replays it exactly.
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def _make_optimizer(
    model, config: TrainConfig, device: torch.device, sparse: bool = True
) -> ModelOptimizer:
    # Adam's weight_decay is the coupled L2 of the paper's code (not AdamW), on every parameter.
    # The fused kernel avoids one launch per parameter tensor on CUDA and on a CPU does the whole
    # update in one pass (11.8M parameters: 8.4 ms a step instead of 96 ms, bench/README.md).
    # The table's gradient is sparse when ``sparse`` (table_optim.py); "adam" stays exact.
    return ModelOptimizer(
        model,
        config.table_optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        fused=_fused_adam(device),
        table_lr=config.table_lr,
        sparse=sparse,
    )


def _fused_adam(device: torch.device) -> bool:
    return device.type in ("cuda", "cpu")


def _check_model_fits(model, data: CTRData) -> None:
    dims = getattr(model, "field_dims", None)
    if dims is not None and list(dims) != list(data.field_dims):
        raise ValueError(
            f"the model was built for field_dims {list(dims)[:6]}... but the data has "
            f"{data.field_dims[:6]}... ({len(data.field_dims)} fields); build it with "
            f"data.field_dims"
        )


def _model_summary(model) -> dict:
    return {
        "class": type(model).__name__,
        "num_sets": getattr(model, "num_sets", None),
        "embed_dim": getattr(model, "embed_dim", None),
        "backend": getattr(model, "backend", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_parameters": (
            model.embedding.weight.numel() if hasattr(model, "embedding") else None
        ),
    }


# ---- training -----------------------------------------------------------------------------------


def _train_one_epoch(
    model,
    optimizer,
    batches,
    num_rows: int,
    config: TrainConfig,
    device: torch.device,
    desc: str,
    forward=None,
) -> torch.Tensor:
    """One pass over ``batches`` of (x, y, loss weight); returns the summed training loss (a
    float64 tensor on ``device``). ``forward`` is the module called on x (default ``model``; a
    DDP wrapper of it in data-parallel runs); the regulariser comes from ``model``. Syncs with the
    device only at the end (and every 100 steps for the progress bar's loss)."""
    from tqdm.auto import tqdm

    forward = forward or model
    forward.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    with tqdm(
        total=num_rows,
        unit="sample",
        unit_scale=True,
        desc=desc,
        disable=not config.progress,
        leave=False,
        mininterval=0.5,
    ) as bar:
        for step, (xb, yb, weight) in enumerate(batches):
            with autocast(config.precision, device):  # the forward and the loss only
                logits = forward(xb)
                loss = F.binary_cross_entropy_with_logits(logits.float(), yb)
                reg = model.regularization_loss() if hasattr(model, "regularization_loss") else None
            total = loss if reg is None else loss + reg
            if weight != 1.0:
                total = total * weight
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(yb)
            bar.update(len(yb))
            if config.progress and step % 100 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    return loss_sum


class ResumeError(ValueError):
    """The run in out_dir cannot be continued with these settings or this data."""


def check_out_dir(out: Path) -> None:
    """Say clearly why ``out`` cannot be a run directory, without creating anything (the run
    creates it under its lock, and removes it again if it fails before writing a file)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output directory {out} is an existing file; choose another --out")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"cannot create the output directory {out}: {existing} is a file; choose another --out"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = (
            "write to the output directory"
            if existing == out
            else f"create the output directory {out} in"
        )
        raise ValueError(f"cannot {what} {existing}; choose another --out")


def prepare_out_dir(out: Path) -> list[Path]:
    """Create the run directory, or say clearly why it cannot be one; returns the directories
    created (removed again by :func:`lock_run_dir` if the run leaves them empty)."""
    check_out_dir(out)
    try:
        return make_dirs(out)
    except OSError as exc:
        raise ValueError(
            f"cannot create the output directory {out}: {exc.strerror or exc}; choose another --out"
        ) from exc


def lock_run_dir(out) -> "contextlib.AbstractContextManager":
    """Hold ``out``'s lock: two runs writing into one directory would mix their checkpoints and
    report each other's numbers, so the second is refused (:class:`fastme._lock.LockedError`).
    The directory is created if needed; on release the lock file is deleted and a directory this
    call created is removed when nothing else was written into it (a command that failed before
    training leaves nothing behind)."""
    out = Path(out)
    return file_lock(out / LOCK, f"the run directory {out}", prepare=lambda: prepare_out_dir(out))


def check_backend(backend: str, device: torch.device, what: str = "the model's backend") -> None:
    """Refuse a kernel backend that cannot run on ``device`` here (``what`` names it)."""
    if backend != "auto" and backend not in available_backends(device):
        raise ValueError(
            f"{what} {backend} cannot run on {device} here (available: "
            f"{', '.join(available_backends(device))}); use auto, one of those or "
            f"another device"
        )


def _constant_logloss(train_set: CTRData, valid_set: CTRData) -> float:
    y = train_set.base_arrays()[1]
    rate = float(np.clip(np.mean(y[train_set.row_numbers()], dtype=np.float64), 1e-6, 1 - 1e-6))
    q = float(np.mean(y[valid_set.row_numbers()], dtype=np.float64))
    return -(q * math.log(rate) + (1 - q) * math.log(1 - rate))


def _state_dict_mismatch(saved: dict, ours: dict) -> str:
    """What differs between two state dicts' keys and shapes ("" when they fit)."""
    problems = [
        f"{k} is {list(saved[k].shape)} in the checkpoint, {list(ours[k].shape)} here"
        for k in saved
        if k in ours and saved[k].shape != ours[k].shape
    ]
    missing = [k for k in ours if k not in saved]
    extra = [k for k in saved if k not in ours]
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    if extra:
        problems.append(f"unexpected {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else ""))
    return "; ".join(problems[:4])


def _fresh_state() -> dict:
    """The trainer's bookkeeping, saved in last.pt so that a resumed run continues it."""
    return {
        "epoch": 0,
        "best_val_auc": -math.inf,
        "best_epoch": None,
        "bad_epochs": 0,
        "history": [],
        "train_time_s": 0.0,
        "wall_time_s": 0.0,
        "train_samples": 0,
    }


class Trainer:
    """One training run, in the order :meth:`run` calls its parts: set up (``__init__``),
    :meth:`start_or_resume`, :meth:`fit` (epochs until :meth:`should_stop`), :meth:`test` the best
    weights, :meth:`results`. :func:`train` is the usual entry point; the parts are separate so
    that a variant (another device layout, another stopping rule) replaces one of them."""

    #: Train with sparse gradients of the embedding table (fastme/train/table_optim.py).
    sparse_table_gradients = True

    def __init__(
        self,
        model,
        data,
        config: TrainConfig | None = None,
        *,
        info: dict | None = None,
        on_epoch: Callback | None = None,
        on_result: Callback | None = None,
    ):
        self.config = config = config or TrainConfig()
        self.device = resolve_device(config.device)
        if isinstance(data, CTRData):
            self.train_set, self.valid_set, self.test_set = data.split(config.split_seed)
        else:
            self.train_set, self.valid_set, self.test_set = data
        for part in (self.train_set, self.valid_set, self.test_set):
            if len(part) == 0:
                raise ValueError(f"{part.name} is empty: the dataset is too small to split 8/1/1")
        if len(self.train_set) < 2:
            raise ValueError(
                f"{self.train_set.name} has {len(self.train_set)} row; training "
                f"needs at least 2 (BatchNorm cannot learn from one sample)"
            )
        _check_model_fits(model, self.train_set)
        check_backend(getattr(model, "backend", "auto"), self.device)
        self.eval_batch_size = config.eval_batch_size or config.batch_size
        self.out = Path(config.out_dir) if config.out_dir is not None else None
        if self.out is not None:
            check_out_dir(self.out)
        self.info = dict(info or {})
        self.on_epoch, self.on_result = on_epoch, on_result
        self.data_desc = {
            "name": self.train_set.name.split("/")[0],
            "field_dims": list(self.train_set.field_dims),
            "field_names": list(self.train_set.field_names),
            "rows": {
                "train": len(self.train_set),
                "valid": len(self.valid_set),
                "test": len(self.test_set),
            },
            # what prediction needs to encode new raw rows exactly as these were
            "source": {
                k: self.train_set.info[k]
                for k in ("dataset", "options", "cache_dir")
                if k in self.train_set.info
            },
            "fingerprint": self.train_set.fingerprint(),
        }
        spec = getattr(model, "spec", None)  # the ModelSpec of a model made by models.build
        self.spec = spec.to_dict() if spec is not None else None
        self.model = model.to(self.device)
        #: The module the training forward calls (a data-parallel trainer's DDP wrapper); the
        #: checkpoints, evaluation and callbacks always use the plain ``model``.
        self.train_module = self.model
        self.optimizer = _make_optimizer(model, config, self.device, self.sparse_table_gradients)
        self.state = _fresh_state()
        self._best_in_memory = None
        self._wall_base = 0.0  # wall time of the sessions before this one (resumed runs)
        self._session_start = time.perf_counter()
        # Log loss of always predicting the training click rate: a model far worse than that on
        # the validation rows has diverged, even when every loss is finite.
        self.constant_logloss = _constant_logloss(self.train_set, self.valid_set)

    # -- what a run is ----------------------------------------------------------------------------
    def describe(self) -> dict:
        """What every checkpoint and results.json record about the run: its config, the caller's
        ``info``, the data's shape and source, the model spec that rebuilds the model and the
        number of processes that trained it."""
        return {
            "config": self.config.as_dict(),
            "info": self.info,
            "data": self.data_desc,
            "spec": self.spec,
            "world_size": 1,
        }

    def checkpoint(self, kind: str) -> dict:
        """The one checkpoint layout: ``kind`` "last" (enough to resume: the trainer's state) or
        "best" (the best epoch's weights and its validation AUC)."""
        ckpt = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.state["epoch"],
            **self.describe(),
        }
        if kind == "last":
            ckpt["trainer"] = self.state
        elif kind == "best":
            ckpt["val_auc"] = self.state["best_val_auc"]
        else:
            raise ValueError(f"checkpoint kind must be 'last' or 'best', got {kind!r}")
        return ckpt

    def save(self, kind: str) -> None:
        """Write :meth:`checkpoint` ``kind`` to out_dir (last.pt or best.pt)."""
        save(self.checkpoint(kind), self.out / (LAST if kind == "last" else BEST))

    # -- the parts of a run -----------------------------------------------------------------------
    def start_or_resume(self) -> None:
        """Continue from out_dir/last.pt (``config.resume``), or clear the files of an earlier run
        there so that they are never resumed or reported later."""
        out = self.out
        if out is None:
            return
        if self.config.resume and (out / LAST).is_file():
            self._resume(out / LAST)
            self._log(f"resumed {out / LAST} after epoch {self.state['epoch']}")
            return
        if self.config.resume:
            self._log(f"no {out / LAST} to resume: starting a fresh run")
        for name in (LAST, BEST, RESULTS):
            (out / name).unlink(missing_ok=True)

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, self.device)
        try:
            saved_config, saved_info, saved_data = ckpt["config"], ckpt["info"], ckpt["data"]
            state = ckpt["trainer"]
        except KeyError as exc:
            raise CheckpointError(
                f"{path} is not a last.pt written by the trainer (no {exc})"
            ) from None
        # a setting added after the run was saved had its default then
        saved = {**TrainConfig().as_dict(), **saved_config}
        saved_trajectory, ours = trajectory(saved), trajectory(self.config.as_dict())
        changed = [
            f"{k} {saved.get(k)!r} (now {getattr(self.config, k)!r})"
            for k in TRAJECTORY_FIELDS
            if saved_trajectory.get(k) != ours.get(k)
        ]
        saved_spec = ckpt.get("spec")
        n_settings = len(changed)
        if self.spec is not None and saved_spec is not None:
            # field_dims are compared with the data below
            changed += [
                f"model {k} {saved_spec.get(k)!r} (now {v!r})"
                for k, v in self.spec.items()
                if k != "field_dims" and saved_spec.get(k) != v
            ]
        else:  # a model not made by models.build: what the caller's info says about it
            changed += [
                f"{k} {saved_info.get(k)!r} (now {self.info.get(k)!r})"
                for k in _MODEL_INFO
                if k in saved_info and k in self.info and saved_info[k] != self.info[k]
            ]
        if changed:
            what = "it holds another model; " if len(changed) > n_settings else ""
            raise ResumeError(
                f"cannot resume {path}: {what}the saved run differs in "
                f"{', '.join(changed)}; resume with the saved settings or train "
                f"into another --out"
            )
        ours = self.data_desc
        if (
            saved_data.get("field_dims") != ours["field_dims"]
            or saved_data.get("rows") != ours["rows"]
            or saved_data.get("fingerprint", ours["fingerprint"]) != ours["fingerprint"]
        ):
            raise ResumeError(
                f"cannot resume {path}: it was trained on different data "
                f"({saved_data.get('name')}, {saved_data.get('rows')} rows, "
                f"fingerprint {saved_data.get('fingerprint')}; this data: "
                f"{ours['name']}, {ours['rows']} rows, fingerprint "
                f"{ours['fingerprint']})"
            )
        mismatch = _state_dict_mismatch(ckpt["model"], self.model.state_dict())
        if mismatch:
            raise ResumeError(
                f"cannot resume {path}: its weights do not fit this model "
                f"({mismatch}); build the model the saved run used"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])  # on this run's device and kernels
        self.state = state
        self._wall_base = float(state.get("wall_time_s", state.get("train_time_s", 0.0)))

    def should_stop(self) -> bool:
        """Early stopping: the epoch budget is spent or ``patience`` epochs in a row brought no
        strictly better validation AUC."""
        return (
            self.state["epoch"] >= self.config.epochs
            or self.state["bad_epochs"] >= self.config.patience
        )

    def fit(self) -> None:
        """Train epoch after epoch until :meth:`should_stop`."""
        while not self.should_stop():
            self.train_epoch()

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """The training rows of ``epoch`` in the order they are visited (row numbers into the
        data's base arrays); depends only on (seed, epoch), so a resumed run replays it."""
        rows = self.train_set.row_numbers()
        if self.config.shuffle:
            rng = np.random.default_rng([self.config.seed, epoch])
            rows = rows[rng.permutation(len(rows))]
        return rows

    def dropout_seed(self, epoch: int) -> int:
        """The seed of torch's generator for ``epoch`` (dropout masks); depends only on (seed,
        epoch), so a resumed run replays it."""
        return _epoch_seed(self.config.seed, epoch)

    def train_batches(self, rows: np.ndarray):
        """The training batches of an epoch visiting ``rows``: (x, y, loss weight) on the device."""
        for xb, yb in iterate_batches(
            self.train_set, rows, self.config.batch_size, self.device, merge_single_tail=True
        ):
            yield xb, yb, 1.0

    def train_pass(self, rows: np.ndarray, desc: str) -> float:
        """Train on :meth:`train_batches` once; returns the mean training loss over ``rows``."""
        with self.optimizer.sparse_gradients():
            loss_sum = _train_one_epoch(
                self.model,
                self.optimizer,
                self.train_batches(rows),
                len(rows),
                self.config,
                self.device,
                desc,
                forward=self.train_module,
            )
        mean_loss = self.sum_over_ranks(loss_sum).item() / max(len(rows), 1)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"{desc}: the training loss is not finite ({mean_loss}): the "
                f"training diverged; try a smaller lr"
            )
        return mean_loss

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the processes sharing the run (one here)."""
        return value

    def evaluate(self, data: CTRData) -> dict:
        """AUC and log loss of the model on ``data`` (validation or test)."""
        with autocast(self.config.precision, self.device):  # as the model is trained
            return evaluate(
                self.model, data, self.device, self.eval_batch_size, self.config.progress
            )

    def train_epoch(self) -> dict:
        """One epoch: train, validate, update the early-stopping state, save checkpoints; returns
        the epoch's history record."""
        state = self.state
        epoch = state["epoch"]
        torch.manual_seed(self.dropout_seed(epoch))
        rows = self.epoch_rows(epoch)
        t0 = time.perf_counter()
        train_loss = self.train_pass(rows, desc=f"epoch {epoch + 1}")
        train_s = time.perf_counter() - t0
        val = self.evaluate(self.valid_set)
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_auc": val["auc"],
            "val_logloss": val["logloss"],
            "train_time_s": train_s,
            "samples_per_s": len(rows) / train_s,
        }
        # Far worse than the constant on the validation rows while fitting the training rows
        # better than it is overfitting (early stopping keeps the best epoch), not divergence.
        fitting = train_loss < self.constant_logloss
        if val["logloss"] > 2 * self.constant_logloss and not fitting:
            record["warning"] = (
                f"epoch {epoch + 1}: validation log loss {val['logloss']:.4g} is more than twice "
                f"that of always predicting the training click rate "
                f"({self.constant_logloss:.4f}): the training is diverging; try a smaller lr"
            )
            warnings.warn(record["warning"], TrainingWarning, stacklevel=2)
        record.update(self._call(self.on_epoch, record))
        improved = val["auc"] > state["best_val_auc"]
        state["epoch"] = epoch + 1
        state["train_time_s"] += train_s
        state["train_samples"] += len(rows)
        state["history"].append(record)
        if improved:
            state.update(best_val_auc=val["auc"], best_epoch=epoch + 1, bad_epochs=0)
            if self.out is not None:
                self.save("best")
            else:
                self._best_in_memory = {
                    k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
                }
        else:
            state["bad_epochs"] += 1
        state["wall_time_s"] = self.wall_time()
        if self.out is not None:
            self.save("last")
        self._log(
            f"epoch {epoch + 1:3d}  train loss {train_loss:.5f}  val AUC {val['auc']:.5f}"
            f"  logloss {val['logloss']:.5f}  {train_s:6.1f} s  "
            f"{record['samples_per_s']:,.0f} samples/s" + ("  *" if improved else "")
        )
        return record

    def test(self) -> dict:
        """Load the best epoch's weights into the model and score them on the test split."""
        if self.out is not None and (self.out / BEST).is_file():
            self.model.load_state_dict(load_checkpoint(self.out / BEST, self.device)["model"])
        elif self._best_in_memory is not None:
            self.model.load_state_dict(self._best_in_memory)
        return self.evaluate(self.test_set)

    def wall_time(self) -> float:
        """Seconds of wall time of the run so far, over all its sessions (a resumed run counts
        the time before its interruption, up to its last saved epoch)."""
        return self._wall_base + time.perf_counter() - self._session_start

    def results(self, test: dict) -> dict:
        """The run's results (written to out_dir/results.json when there is one)."""
        state = self.state
        best = state["best_epoch"]
        best_val_logloss = state["history"][best - 1]["val_logloss"] if best else None
        results = {
            "test_auc": test["auc"],
            "test_logloss": test["logloss"],
            "best_val_auc": state["best_val_auc"],
            "best_epoch": best,
            "best_val_logloss": best_val_logloss,
            "epochs": state["epoch"],
            "stopped_early": state["bad_epochs"] >= self.config.patience,
            "samples_per_s": state["train_samples"] / max(state["train_time_s"], 1e-9),
            "train_time_s": state["train_time_s"],
            "wall_time_s": self.wall_time(),
            "field_names": list(self.train_set.field_names),
            "history": state["history"],
            "model": _model_summary(self.model),
            "device": str(self.device),
            "torch": torch.__version__,
            **self.describe(),
        }
        diverged = (
            test["logloss"] > 2 * self.constant_logloss
            or best_val_logloss is None
            or best_val_logloss > 2 * self.constant_logloss
        )
        results["diverged"] = diverged
        results["warnings"] = [h["warning"] for h in state["history"] if "warning" in h]
        if diverged:
            results["warnings"].append(
                f"test log loss {test['logloss']:.4g} against {self.constant_logloss:.4f} for "
                f"always predicting the training click rate: this run diverged and its scores "
                f"mean nothing; train again with a smaller lr"
            )
            warnings.warn(results["warnings"][-1], TrainingWarning, stacklevel=2)
        results.update(self._call(self.on_result, results))
        if self.out is not None:
            write_text(self.out / RESULTS, json.dumps(results, indent=1, default=json_default))
            results["results_path"] = str(self.out / RESULTS)
            results["checkpoint_path"] = str(self.out / BEST)  # what predict and export take
        return results

    def run(self, lock: bool = True) -> dict:
        """The whole run; with an out_dir, under its lock (a second run into the same directory
        is refused while this one is alive). ``lock=False``: the caller holds it already
        (:func:`lock_run_dir`, as ``fastme train`` does from before it loads the data)."""
        self._session_start = time.perf_counter()
        with self.lock() if lock else contextlib.nullcontext():
            self.start_or_resume()
            self.fit()
            return self.results(self.test())

    def lock(self):
        """The run directory's lock (a no-op without out_dir)."""
        if self.out is None:
            return contextlib.nullcontext()
        return lock_run_dir(self.out)

    # -- helpers ----------------------------------------------------------------------------------
    def _call(self, callback: Callback | None, entry: dict) -> dict:
        """A callback's extra entries. A failing measurement must not lose a training run, so its
        error is warned about and recorded instead of raised."""
        if callback is None:
            return {}
        try:
            return dict(callback(self.model, entry) or {})
        except Exception as exc:  # noqa: BLE001 - reported in the results and as a warning
            name = getattr(callback, "__name__", type(callback).__name__)
            warnings.warn(f"{name} failed: {exc!r}", RuntimeWarning, stacklevel=3)
            return {"callback_error": f"{name}: {type(exc).__name__}: {exc}"}

    def _log(self, message: str) -> None:
        if self.config.verbose:
            print(message, flush=True)


def train(
    model,
    data,
    config: TrainConfig | None = None,
    *,
    info: dict | None = None,
    on_epoch: Callback | None = None,
    on_result: Callback | None = None,
    lock: bool = True,
) -> dict:
    """Train ``model`` on ``data`` and return the results (also written to out_dir/results.json).

    Args:
        model: any ``fastme.models`` model (or nn.Module mapping int [B, N] -> logits [B]).
        data: a :class:`CTRData` (split 8/1/1 with ``config.split_seed``) or an already split
            (train, valid, test) tuple.
        config: :class:`TrainConfig` (default: the paper's settings).
        info: extra description of the run (model name, data spec, ...) stored with the results
            and checkpoints.
        on_epoch: ``on_epoch(model, record)`` after each epoch's validation; the dict it returns
            is added to that epoch's history record (e.g. ``{"field_ia": [...]}``).
        on_result: ``on_result(model, results)`` with the best model after the test; the dict it
            returns is added to the results.
        lock: take the run directory's lock (False: the caller holds it, :func:`lock_run_dir`).

    Returns a dict with test_auc, test_logloss, best_val_auc, best_epoch, epochs, samples_per_s,
    the per-epoch history, the config, ``info`` and what ``on_result`` added.
    """
    return Trainer(model, data, config, info=info, on_epoch=on_epoch, on_result=on_result).run(lock)


def _processes(world_size: int) -> str:
    return "1 process" if world_size == 1 else f"{world_size} processes (data parallel)"


def print_summary(results: dict, file=None) -> None:
    """The human-readable end-of-run summary of :func:`train`'s results."""
    file = file or sys.stdout
    info = results.get("info") or {}
    rows = results["data"]["rows"]
    title = info.get("title") or f"{results['model']['class']} on {results['data']['name']}"
    lines = [
        f"== {title} ==",
        f"data          {results['data']['name']}: {sum(rows.values()):,} rows "
        f"(train {rows['train']:,} / valid {rows['valid']:,} / test {rows['test']:,}), "
        f"{len(results['data']['field_dims'])} fields",
        f"test AUC      {results['test_auc']:.5f}   test logloss {results['test_logloss']:.5f}",
        f"best val AUC  {results['best_val_auc']:.5f} at epoch {results['best_epoch']} of "
        f"{results['epochs']}" + ("  (stopped early)" if results["stopped_early"] else ""),
    ]
    ia = results.get("field_ia")
    if ia and not np.isnan(np.asarray(ia, dtype=float)).all():
        names = results["field_names"]
        lo, hi = int(np.nanargmin(ia)), int(np.nanargmax(ia))
        lines.append(
            f"field IA      mean {np.nanmean(ia):.2f}  min {ia[lo]:.2f} ({names[lo]})  "
            f"max {ia[hi]:.2f} ({names[hi]})"
        )
    elif "field_ia" in results or "callback_error" in results:
        lines.append(f"field IA      unavailable ({results.get('callback_error', 'not computed')})")
    lines.append(
        f"time          {results['wall_time_s']:.1f} s "
        f"(training {results['train_time_s']:.1f} s)   "
        f"{results['samples_per_s']:,.0f} samples/s on {results['device']}, "
        f"{_processes(results.get('world_size', 1))}"
    )
    if results.get("checkpoint_path"):
        lines.append(f"best model    {results['checkpoint_path']} (for fastme predict / export)")
    if results.get("results_path"):
        lines.append(f"results       {results['results_path']}")
    print("\n".join(lines), file=file, flush=True)
