"""The training loop of the paper (Appendix C.2) for any ``fastme.models`` model.

8/1/1 random split with seed 0, Adam (lr 1e-3, coupled L2 weight decay 1e-6 on every parameter,
as the reference code's ``torch.optim.Adam``), batch 2048, BCE-with-logits plus the model's
regularisation loss, validation AUC and log loss after every epoch, early stopping on validation
AUC (strict improvement, patience 3), and the test score of the best checkpoint.

Files in ``out_dir``: ``last.pt`` (after every epoch: model, optimizer, epoch, config and the
trainer's state, enough to resume), ``best.pt`` (the best epoch's model and optimizer) and
``results.json``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastme.data.dataset import CTRData
from fastme.train.batches import iterate_batches
from fastme.train.metrics import log_loss_from_logits, roc_auc

LAST, BEST, RESULTS = "last.pt", "best.pt", "results.json"

#: Config fields that define the optimisation trajectory; a resumed run must keep them.
_TRAJECTORY_FIELDS = ("batch_size", "lr", "weight_decay", "seed", "split_seed", "shuffle")


@dataclass
class TrainConfig:
    """Training settings; the defaults are the paper's (Appendix C.2).

    Attributes:
        epochs: maximum number of epochs.
        batch_size: training batch size (2048).
        eval_batch_size: batch size for validation/test (None: ``batch_size``, as in the paper).
        lr, weight_decay: Adam's learning rate and coupled L2 weight decay.
        patience: stop after this many consecutive epochs without a strictly better
            validation AUC.
        device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).
        seed: seeds dropout and (with ``shuffle``) the epoch order; the model's initialisation is
            seeded by whoever builds it (``fastme train`` seeds torch with the same value).
        split_seed: seed of the 8/1/1 split (the paper fixes it to 0 for every repeat).
        shuffle: reshuffle the training rows every epoch. Off by default, as in the paper's code,
            which trains every epoch in the single random order of the split.
        out_dir: where checkpoints and results.json go (None: keep the best model in memory).
        resume: continue from ``out_dir/last.pt`` if it exists.
        track_ia: record every field's Information Abundance after each epoch.
        progress: show progress bars; verbose: print one line per epoch.
    """

    epochs: int = 100
    batch_size: int = 2048
    eval_batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-6
    patience: int = 3
    device: str = "cpu"
    seed: int = 0
    split_seed: int = 0
    shuffle: bool = False
    out_dir: str | None = None
    resume: bool = False
    track_ia: bool = False
    progress: bool = True
    verbose: bool = True

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
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)
        if self.resume and self.out_dir is None:
            raise ValueError("resume needs out_dir (where the run's last.pt is)")


def resolve_device(spec: str) -> torch.device:
    """"auto" -> CUDA when available else CPU; anything else is checked to exist."""
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


# ---- information abundance (provided by fastme.analysis) ---------------------------------------

def _ia_function():
    """``fastme.analysis.field_information_abundance``, or None while that module is absent."""
    try:
        module = importlib.import_module("fastme.analysis")
    except ModuleNotFoundError as exc:
        if exc.name == "fastme.analysis":
            return None
        raise
    return getattr(module, "field_information_abundance", None)


def _field_ia(model) -> tuple[list[float] | None, str | None]:
    """(per-field IA, None) or (None, why not). An analysis failure must not lose a finished
    training run, so it is reported instead of raised."""
    fn = _ia_function()
    if fn is None:
        return None, "fastme.analysis.field_information_abundance is not available"
    try:
        return [float(v) for v in fn(model)], None
    except Exception as exc:  # noqa: BLE001 - reported in the results and as a warning
        warnings.warn(f"information abundance failed: {exc!r}", RuntimeWarning, stacklevel=2)
        return None, f"{type(exc).__name__}: {exc}"


# ---- evaluation ---------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, data: CTRData, device: torch.device, batch_size: int = 2048,
             progress: bool = False) -> dict:
    """AUC and log loss of ``model`` (eval mode) on ``data``."""
    from tqdm.auto import tqdm

    if len(data) == 0:
        raise ValueError(f"cannot evaluate on {data.name}: it has no rows")
    model.eval()
    rows = np.sort(data.row_numbers())  # the order does not matter here; sorted reads are faster
    logits = torch.empty(len(rows), dtype=torch.float32, device=device)
    pos = 0
    with tqdm(total=len(rows), unit="sample", unit_scale=True, desc=f"eval {data.name}",
              disable=not progress, leave=False, mininterval=0.5) as bar:
        for xb, _ in iterate_batches(data, rows, batch_size, device, sort_rows=False):
            logits[pos:pos + len(xb)] = model(xb).float()
            pos += len(xb)
            bar.update(len(xb))
    z = logits.cpu().numpy()
    labels = data.base_arrays()[1][rows]
    if not np.isfinite(z).all():
        raise FloatingPointError(f"the model produced non-finite logits on {data.name}")
    try:
        auc = roc_auc(labels, z)
    except ValueError as exc:
        raise ValueError(f"{data.name}: {exc}") from exc
    return {"auc": auc, "logloss": log_loss_from_logits(labels, z)}


# ---- checkpoints --------------------------------------------------------------------------------

def _save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def load_checkpoint(path, device="cpu") -> dict:
    """A checkpoint written by :func:`train` (model/optimizer state dicts, epoch, config, ...)."""
    return torch.load(path, map_location=device, weights_only=True)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Each epoch's randomness depends only on (seed, epoch), so a resumed run replays it exactly.
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def _make_optimizer(model, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # Adam's weight_decay is the coupled L2 of the paper's code (not AdamW), on every parameter.
    # The fused kernel avoids one launch per parameter tensor on CUDA.
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            fused=device.type == "cuda")


def _check_model_fits(model, data: CTRData) -> None:
    dims = getattr(model, "field_dims", None)
    if dims is not None and list(dims) != list(data.field_dims):
        raise ValueError(f"the model was built for field_dims {list(dims)[:6]}... but the data has "
                         f"{data.field_dims[:6]}... ({len(data.field_dims)} fields); build it with "
                         f"data.field_dims")


def _model_summary(model) -> dict:
    return {"class": type(model).__name__,
            "num_sets": getattr(model, "num_sets", None),
            "embed_dim": getattr(model, "embed_dim", None),
            "backend": getattr(model, "backend", None),
            "parameters": sum(p.numel() for p in model.parameters()),
            "embedding_parameters": (model.embedding.weight.numel()
                                     if hasattr(model, "embedding") else None)}


# ---- training -----------------------------------------------------------------------------------

def _train_one_epoch(model, optimizer, data: CTRData, rows: np.ndarray, config: TrainConfig,
                     device: torch.device, desc: str) -> float:
    """One pass over ``rows``; returns the mean training loss. Syncs with the device only at the
    end (and every 100 steps for the progress bar's loss)."""
    from tqdm.auto import tqdm

    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    with tqdm(total=len(rows), unit="sample", unit_scale=True, desc=desc,
              disable=not config.progress, leave=False, mininterval=0.5) as bar:
        for step, (xb, yb) in enumerate(iterate_batches(data, rows, config.batch_size, device)):
            logits = model(xb)
            loss = F.binary_cross_entropy_with_logits(logits.float(), yb)
            reg = model.regularization_loss() if hasattr(model, "regularization_loss") else None
            total = loss if reg is None else loss + reg
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(yb)
            bar.update(len(yb))
            if config.progress and step % 100 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    mean_loss = loss_sum.item() / max(len(rows), 1)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"{desc}: the training loss is not finite ({mean_loss}); "
                                 f"try a smaller lr")
    return mean_loss


def _log(config: TrainConfig, message: str) -> None:
    if config.verbose:
        print(message, flush=True)


def train(model, data, config: TrainConfig | None = None, *, info: dict | None = None) -> dict:
    """Train ``model`` on ``data`` and return the results (also written to out_dir/results.json).

    Args:
        model: any ``fastme.models`` model (or nn.Module mapping int [B, N] -> logits [B]).
        data: a :class:`CTRData` (split 8/1/1 with ``config.split_seed``) or an already split
            (train, valid, test) tuple.
        config: :class:`TrainConfig` (default: the paper's settings).
        info: extra description of the run (model name, data spec, ...) stored with the results
            and checkpoints.

    Returns a dict with test_auc, test_logloss, best_val_auc, best_epoch, epochs, samples_per_s,
    the per-epoch history, per-field information abundance (when ``fastme.analysis`` provides it),
    the config and ``info``.
    """
    config = config or TrainConfig()
    device = resolve_device(config.device)
    if isinstance(data, CTRData):
        train_set, valid_set, test_set = data.split(config.split_seed)
    else:
        train_set, valid_set, test_set = data
    for part in (train_set, valid_set, test_set):
        if len(part) == 0:
            raise ValueError(f"{part.name} is empty: the dataset is too small to split 8/1/1")
    _check_model_fits(model, train_set)
    eval_bs = config.eval_batch_size or config.batch_size
    out = Path(config.out_dir) if config.out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    cfg_dict = dataclasses.asdict(config)
    data_desc = {"name": train_set.name.split("/")[0], "field_dims": list(train_set.field_dims),
                 "field_names": list(train_set.field_names),
                 "rows": {"train": len(train_set), "valid": len(valid_set), "test": len(test_set)}}

    model.to(device)
    optimizer = _make_optimizer(model, config, device)
    state = {"epoch": 0, "best_val_auc": -math.inf, "best_epoch": None, "bad_epochs": 0,
             "history": [], "train_time_s": 0.0, "train_samples": 0}
    best_in_memory = None
    if config.resume and (out / LAST).is_file():
        state = _resume(model, optimizer, out / LAST, config, data_desc, device)
        _log(config, f"resumed {out / LAST} after epoch {state['epoch']}")
    elif out is not None:
        # A fresh run: files of an earlier run here must not be resumed or reported later.
        for name in (LAST, BEST, RESULTS):
            (out / name).unlink(missing_ok=True)

    train_rows = train_set.row_numbers()
    started = time.perf_counter()
    while state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
        epoch = state["epoch"]
        torch.manual_seed(_epoch_seed(config.seed, epoch))
        rows = train_rows
        if config.shuffle:
            rows = train_rows[np.random.default_rng([config.seed, epoch]).permutation(len(rows))]
        t0 = time.perf_counter()
        train_loss = _train_one_epoch(model, optimizer, train_set, rows, config, device,
                                      desc=f"epoch {epoch + 1}")
        train_s = time.perf_counter() - t0
        val = evaluate(model, valid_set, device, eval_bs, config.progress)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_auc": val["auc"],
                  "val_logloss": val["logloss"], "train_time_s": train_s,
                  "samples_per_s": len(rows) / train_s}
        if config.track_ia:
            record["field_ia"], _ = _field_ia(model)
        improved = val["auc"] > state["best_val_auc"]
        state["epoch"] = epoch + 1
        state["train_time_s"] += train_s
        state["train_samples"] += len(rows)
        state["history"].append(record)
        if improved:
            state.update(best_val_auc=val["auc"], best_epoch=epoch + 1, bad_epochs=0)
            if out is not None:
                _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "epoch": epoch + 1, "config": cfg_dict, "info": info or {},
                       "data": data_desc, "val_auc": val["auc"]}, out / BEST)
            else:
                best_in_memory = {k: v.detach().to("cpu", copy=True)
                                  for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        if out is not None:
            _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "epoch": epoch + 1, "config": cfg_dict, "info": info or {}, "data": data_desc,
                   "trainer": state}, out / LAST)
        _log(config, f"epoch {epoch + 1:3d}  train loss {train_loss:.5f}  val AUC {val['auc']:.5f}"
                     f"  logloss {val['logloss']:.5f}  {train_s:6.1f} s  "
                     f"{record['samples_per_s']:,.0f} samples/s" + ("  *" if improved else ""))

    # Test the best checkpoint (the model as it was after its best validation epoch).
    if out is not None and (out / BEST).is_file():
        model.load_state_dict(load_checkpoint(out / BEST, device)["model"])
    elif best_in_memory is not None:
        model.load_state_dict(best_in_memory)
    test = evaluate(model, test_set, device, eval_bs, config.progress)
    field_ia, ia_note = _field_ia(model)
    results = {
        "test_auc": test["auc"], "test_logloss": test["logloss"],
        "best_val_auc": state["best_val_auc"], "best_epoch": state["best_epoch"],
        "best_val_logloss": (state["history"][state["best_epoch"] - 1]["val_logloss"]
                             if state["best_epoch"] else None),
        "epochs": state["epoch"], "stopped_early": state["bad_epochs"] >= config.patience,
        "samples_per_s": state["train_samples"] / max(state["train_time_s"], 1e-9),
        "train_time_s": state["train_time_s"],
        "wall_time_s": time.perf_counter() - started,
        "field_names": list(train_set.field_names), "field_ia": field_ia,
        "history": state["history"], "data": data_desc, "model": _model_summary(model),
        "device": str(device), "torch": torch.__version__, "config": cfg_dict, "info": info or {},
    }
    if ia_note:
        results["field_ia_note"] = ia_note
    if out is not None:
        tmp = out / (RESULTS + ".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=_json_default))
        os.replace(tmp, out / RESULTS)
        results["results_path"] = str(out / RESULTS)
    return results


class ResumeError(ValueError):
    """The run in out_dir cannot be continued with these settings or this data."""


def _resume(model, optimizer, path: Path, config: TrainConfig, data_desc: dict,
            device: torch.device) -> dict:
    ckpt = load_checkpoint(path, device)
    saved = ckpt["config"]
    changed = [k for k in _TRAJECTORY_FIELDS if saved.get(k) != getattr(config, k)]
    if changed:
        raise ResumeError(f"cannot resume {path}: {', '.join(changed)} differ from the saved run "
                         f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)})")
    if ckpt["data"]["field_dims"] != data_desc["field_dims"] or \
            ckpt["data"]["rows"] != data_desc["rows"]:
        raise ResumeError(f"cannot resume {path}: it was trained on different data "
                         f"({ckpt['data']['rows']} rows)")
    model.load_state_dict(ckpt["model"])
    # The saved run may have used another device: load with this run's kernel choice, so that
    # torch places Adam's step counters where the fused kernel expects them.
    opt_state = ckpt["optimizer"]
    for group in opt_state["param_groups"]:
        group["fused"] = device.type == "cuda"
        group["foreach"] = None
    optimizer.load_state_dict(opt_state)
    return ckpt["trainer"]


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def print_summary(results: dict, file=None) -> None:
    """The human-readable end-of-run summary of :func:`train`'s results."""
    file = file or sys.stdout
    info = results.get("info") or {}
    rows = results["data"]["rows"]
    title = info.get("title") or f"{results['model']['class']} on {results['data']['name']}"
    lines = [f"== {title} ==",
             f"data          {results['data']['name']}: {sum(rows.values()):,} rows "
             f"(train {rows['train']:,} / valid {rows['valid']:,} / test {rows['test']:,}), "
             f"{len(results['data']['field_dims'])} fields",
             f"test AUC      {results['test_auc']:.5f}   "
             f"test logloss {results['test_logloss']:.5f}",
             f"best val AUC  {results['best_val_auc']:.5f} at epoch {results['best_epoch']} of "
             f"{results['epochs']}" + ("  (stopped early)" if results["stopped_early"] else "")]
    ia = results.get("field_ia")
    if ia and not np.isnan(ia).all():
        names = results["field_names"]
        lo, hi = int(np.nanargmin(ia)), int(np.nanargmax(ia))
        lines.append(f"field IA      mean {np.nanmean(ia):.2f}  min {ia[lo]:.2f} ({names[lo]})  "
                     f"max {ia[hi]:.2f} ({names[hi]})")
    else:
        lines.append(f"field IA      unavailable ({results.get('field_ia_note', 'not computed')})")
    lines.append(f"time          {results['wall_time_s']:.1f} s "
                 f"(training {results['train_time_s']:.1f} s)   "
                 f"{results['samples_per_s']:,.0f} samples/s on {results['device']}")
    if results.get("results_path"):
        lines.append(f"results       {results['results_path']}")
    print("\n".join(lines), file=file, flush=True)
