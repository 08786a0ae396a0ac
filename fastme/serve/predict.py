"""Scoring files with a trained model: one probability per input row, in input order.

The raw file is read line by line in blocks (bounded memory; gzip, bz2 or zstd allowed) so that
every input line keeps its place: a malformed line yields its row with an empty probability
instead of vanishing. Cells are validated, transformed and mapped to indices by the training
pipeline's own code (the format's module in fastme.data.formats, its ``read_rows``) with the
training cache's vocabulary, so a value is encoded exactly as it was in training (unseen or rare
-> the field's OOV index, empty -> its missing index).

Each format of fastme.data.formats that READS_ROWS (``criteo:PATH``, ``avazu:PATH``,
``csv:PATH``: the kind the model was trained on; its ``layout`` tells which of its files it is,
e.g. Criteo's train.txt, test.txt or the competition's CSV) says how its rows are identified.
``parquet:PATH`` files are encoded with the training vocabulary and column options too, rows
identified by their number over all files. Other data (``cache:DIR``, ``npy:DIR``,
``synthetic``), already encoded, is scored in the order of the dataset by row number.
"""

from __future__ import annotations

import contextlib
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from fastme._atomic import replace_on_success
from fastme.data.dataset import training_vocab
from fastme.data.formats import FORMATS, TEXT_FORMATS, RowTally
from fastme.ops import bounds_check, get_bounds_check
from fastme.train.checkpoint import load_trained
from fastme.train.metrics import log_loss_from_logits, roc_auc
from fastme.train.precision import autocast, check_precision, store_tables
from fastme.train.trainer import resolve_device

BLOCK_BYTES = 16 << 20


@dataclass
class Summary(RowTally):
    """What one scoring run did (the rows themselves go to the output file)."""

    seconds: float = 0.0
    auc: float | None = None
    logloss: float | None = None
    out: str | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


class Predictor:
    """A trained model with the vocabulary it was trained with, ready to score files.

    ``Predictor(checkpoint)`` reads a checkpoint (or run directory) written by ``fastme train``;
    ``vocab_dir`` overrides where the training cache (its ``vocab.json``) is looked up.
    """

    def __init__(
        self,
        checkpoint,
        *,
        vocab_dir=None,
        backend: str = "auto",
        device: str = "cpu",
        batch_size: int = 4096,
        precision: str = "fp32",
        table_dtype: str = "fp32",
    ):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.precision = check_precision(precision)
        self.device = resolve_device(device)
        self.model, ckpt = load_trained(checkpoint, backend=backend, device=self.device)
        store_tables(self.model, table_dtype, self.precision)
        self.spec = self.model.spec
        self.batch_size = int(batch_size)
        data = ckpt.get("data") or {}
        self.field_names = list(data.get("field_names") or [])
        self.source = dict(data.get("source") or {})
        self._vocab_dir = vocab_dir
        self._vocab = None

    # -- model ------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, x: np.ndarray, in_range: bool = False) -> np.ndarray:
        """Logits (float64) of per-field indices ``x`` [n, N], ``batch_size`` rows at a time.
        ``in_range``: the indices come from the vocabulary, so the ops' bounds check is skipped
        (it costs a sixth of the time on a CPU)."""
        out = np.empty(len(x), dtype=np.float64)
        with (
            bounds_check("off" if in_range else get_bounds_check()),
            autocast(self.precision, self.device),
        ):
            for start in range(0, len(x), self.batch_size):
                xb = torch.from_numpy(
                    np.ascontiguousarray(x[start : start + self.batch_size], dtype=np.int64)
                ).to(self.device)
                out[start : start + len(xb)] = self.model(xb).double().cpu().numpy()
        return out

    def vocabulary(self) -> list[pa.Array]:
        if self._vocab is None:
            vocab = training_vocab(
                self._vocab_dir or self.source.get("cache_dir"), self.spec.field_dims
            )
            self._vocab = [pa.array(v) for v in vocab]
        return self._vocab

    # -- files -----------------------------------------------------------------------------
    def iter_raw(
        self,
        kind: str,
        path,
        *,
        block_bytes: int = BLOCK_BYTES,
        summary: Summary | None = None,
        progress: bool = False,
        options: dict | None = None,
        id_start: int | None = None,
        id_column: str | None = None,
    ):
        """Score the rows of a file of a format that READS_ROWS (criteo, avazu, csv, parquet)
        block by block: yields ((id, probability) column names or None, ids, logits, labels),
        one entry per input row in input order; a malformed row has logit NaN (label NaN too;
        labels is None for unlabeled data). ``options``: how a text file is laid out (the
        format's READ_OPTIONS, e.g. ``{"header": "none"}`` for Avazu). Rows are identified by
        the file's id column, or ``id_column``, or by their number counted from ``id_start``
        (default 0)."""
        fmt, trained = FORMATS[kind], self.source.get("dataset")
        if trained != kind:
            raise ValueError(
                f"the model was trained on {trained or 'already encoded'} data, not "
                f"on {'raw ' * (kind in TEXT_FORMATS)}{kind} files, so it has no "
                f"{kind} vocabulary; score "
                + (
                    f"{trained}:PATH files"
                    if trained in FORMATS and FORMATS[trained].READS_ROWS
                    else "encoded data (cache:DIR, npy:DIR)"
                )
                + " with it"
            )
        allowed = fmt.READ_OPTIONS or ()
        unknown = sorted(set(options or {}) - set(allowed))
        if unknown:
            raise ValueError(
                f"predicting {kind} files takes no option {', '.join(unknown)} "
                f"(the training run's options apply; "
                + (f"allowed: {', '.join(allowed)})" if allowed else "none allowed)")
            )
        summary = summary if summary is not None else Summary()
        for names, ids, n, where, x, labels in fmt.read_rows(
            path,
            self.source,
            self.vocabulary,
            summary,
            progress=progress,
            options=options,
            id_start=id_start,
            id_column=id_column,
            block_bytes=block_bytes,
        ):
            logits = np.full(n, np.nan)
            logits[slice(None) if where is None else where] = self.logits(x, in_range=True)
            summary.scored += int(np.isfinite(logits).sum())
            yield names, ids, logits, labels

    # -- datasets ----------------------------------------------------------------------------
    def iter_dataset(
        self,
        data,
        *,
        summary: Summary | None = None,
        block_rows: int = 1 << 18,
        progress: bool = False,
        id_start: int | None = None,
    ):
        """Score a :class:`~fastme.data.CTRData` in its row order: yields (None, row numbers
        counted from ``id_start`` (default 0), logits, labels)."""
        from tqdm.auto import tqdm

        if list(data.field_dims) != list(self.spec.field_dims):
            raise ValueError(
                f"{data.name} has field_dims {list(data.field_dims)[:6]}..., the "
                f"model {list(self.spec.field_dims)[:6]}...; score data encoded "
                f"with the training vocabulary"
            )
        summary = summary if summary is not None else Summary()
        x, y = data.base_arrays()
        rows = data.row_numbers()
        with tqdm(
            total=len(rows),
            unit="row",
            unit_scale=True,
            disable=not progress,
            desc=f"predict {data.name}",
            mininterval=1.0,
        ) as bar:
            for start in range(0, len(rows), block_rows):
                r = rows[start : start + block_rows]
                logits = self.logits(np.asarray(x[r]))
                summary.rows += len(r)
                summary.scored += len(r)
                bar.update(len(r))
                ids = np.arange(start, start + len(r)) + (id_start or 0)
                yield None, ids, logits, np.asarray(y[r], np.float64)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Click probability of logits, without overflow warnings for large |z| (NaN stays NaN)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def predict(
    checkpoint,
    data: str,
    out=None,
    *,
    vocab_dir=None,
    cache_dir=None,
    backend: str = "auto",
    device: str = "cpu",
    batch_size: int = 4096,
    precision: str = "fp32",
    table_dtype: str = "fp32",
    progress: bool = False,
    data_options: dict | None = None,
    id_start: int | None = None,
    id_column: str | None = None,
) -> Summary:
    """Score ``data`` with the model of ``checkpoint`` and write ``out`` (CSV: an id column and
    the probability, one line per input row in input order; empty for a malformed row).

    ``data`` is ``criteo:PATH``, ``avazu:PATH`` or ``csv:PATH`` (raw files, see the module
    docstring; ``data_options`` say how the file is laid out, e.g. ``{"header": "none"}``) or any
    other :func:`fastme.data.load_dataset` spec (scored in its row order). Rows identified by
    their number are numbered from ``id_start`` (Criteo's test.txt: 60000000, its Kaggle Ids;
    the output header is then ``Id,Predicted`` for Criteo files); ``id_column`` takes the ids
    from that column of a file with named columns (CSV with a header, Parquet). ``out`` is
    written whole or not at all: a failure leaves an existing file as it was. Returns a
    :class:`Summary` with the row counts, rows/s and, when the input has labels, AUC and log
    loss over the well-formed rows. ``precision`` "bf16" scores under bfloat16 autocast
    (fastme/train/precision.py); ``table_dtype`` "bf16" (with it) stores the embedding tables
    in bfloat16 while scoring.
    """
    if id_start is not None and id_column is not None:
        raise ValueError(
            "--id-start and --id-column exclude each other: rows are identified "
            "either by their number or by a column"
        )
    if id_start is not None and (
        isinstance(id_start, bool) or int(id_start) != id_start or id_start < 0
    ):
        raise ValueError(f"--id-start must be a non-negative integer, got {id_start!r}")
    kind, _, arg = str(data).partition(":")
    reads_rows = kind in FORMATS and FORMATS[kind].READS_ROWS
    if id_column is not None and not reads_rows:
        raise ValueError(
            f"--id-column: {data} is encoded data without named columns; its rows "
            f"are numbered, --id-start N sets the first row's id"
        )
    if kind in TEXT_FORMATS and not arg:
        raise ValueError(f"give the file as {kind}:PATH, got {data!r}")
    predictor = Predictor(
        checkpoint,
        vocab_dir=vocab_dir,
        backend=backend,
        device=device,
        batch_size=batch_size,
        precision=precision,
        table_dtype=table_dtype,
    )
    summary = Summary()
    if data_options and (not reads_rows or FORMATS[kind].READ_OPTIONS is None):
        raise ValueError(
            f"data options ({', '.join(sorted(data_options))}) apply to raw files "
            f"({', '.join(f'{k}:PATH' for k in TEXT_FORMATS)}), not to {data!r}"
        )
    if reads_rows:
        blocks = predictor.iter_raw(
            kind,
            arg,
            summary=summary,
            progress=progress,
            options=data_options,
            id_start=id_start,
            id_column=id_column,
        )
    else:
        from fastme.data import load_dataset

        blocks = predictor.iter_dataset(
            load_dataset(data, cache_dir=cache_dir),
            summary=summary,
            progress=progress,
            id_start=id_start,
        )
    header = [id_column or ("row" if id_start is None else "id"), "probability"]
    started = time.perf_counter()
    labels_all, logits_all = [], []
    # Written to a temporary file renamed over ``out`` only once complete: a failure (a bad
    # spec, a model of another dataset, a damaged file half-way) leaves an older file intact, and
    # predicts run at once into one file each leave a whole file (the last one's).
    with contextlib.ExitStack() as stack:
        writer = handle = None
        if out is not None:
            tmp = stack.enter_context(replace_on_success(Path(out), make_parents=True))
            handle = stack.enter_context(open(tmp, "w", newline=""))
            writer = csv.writer(handle)
        for names, ids, logits, labels in blocks:
            if writer is not None:
                if handle.tell() == 0:
                    writer.writerow(list(names or header))
                ids = ids.to_pylist() if isinstance(ids, pa.Array) else ids.tolist()
                probs = sigmoid(logits).tolist()
                writer.writerows(zip(ids, ("" if p != p else f"{p:.10g}" for p in probs)))
            if labels is not None:
                good = np.isfinite(logits)
                labels_all.append(labels[good].astype(np.float32))
                logits_all.append(logits[good])
    summary.out = str(out) if out is not None else None
    summary.seconds = time.perf_counter() - started
    if labels_all:
        y, z = np.concatenate(labels_all), np.concatenate(logits_all)
        if len(y) and 0 < y.sum() < len(y):
            summary.auc = roc_auc(y, z)
            summary.logloss = log_loss_from_logits(y, z)
    return summary


def print_summary(summary: Summary, file=None) -> None:
    file = file or sys.stderr
    bad = sum(summary.malformed.values())
    lines = [
        f"predict: {summary.rows:,} rows ({summary.scored:,} scored, {bad:,} malformed) "
        f"in {summary.seconds:.1f} s, {summary.rows_per_s:,.0f} rows/s"
    ]
    if bad:
        lines.append(
            "  malformed rows have an empty probability: "
            + ", ".join(f"{k} {v:,}" for k, v in summary.malformed.items())
            + (
                "; e.g. " + "; ".join(summary.malformed_examples[:3])
                if summary.malformed_examples
                else ""
            )
        )
    if summary.auc is not None:
        lines.append(
            f"  AUC {summary.auc:.5f}  logloss {summary.logloss:.5f} "
            f"(over the well-formed labeled rows)"
        )
    if summary.out:
        lines.append(f"  wrote {summary.out}")
    print("\n".join(lines), file=file, flush=True)
