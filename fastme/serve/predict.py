"""Scoring files with a trained model: one probability per input row, in input order.

The raw file is read line by line in blocks (bounded memory; gzip, bz2 or zstd allowed) so that
every input line keeps its place: a malformed line yields its row with an empty probability
instead of vanishing. Cells are validated, transformed and mapped to indices by the training pipeline's own
code (fastme.data.raw) with the training cache's vocabulary, so a value is encoded exactly as it
was in training (unseen or rare -> the field's OOV index, empty -> its missing index).

Recognised inputs (``criteo:PATH`` / ``avazu:PATH`` / ``csv:PATH``, the kind the model was
trained on):

- Criteo ``train.txt`` (40 tab-separated columns, label first) or ``test.txt`` (39, no label);
  rows are identified by their 0-based line number (``row``);
- the competition's CSV files: header ``Id,Label,I1..I13,C1..C26`` or ``Id,I1..C26`` (``Id``);
- Avazu ``train`` (header with ``click``) or ``test`` (no ``click``), identified by ``id``; with
  the option ``header=none``, the same files without their header line (24 or 23 columns);
- a CSV file with a header line holding the training run's fields (the label column optional),
  read with its delimiter; rows identified by their number (``row``).

``parquet:PATH`` files are encoded with the training vocabulary and column options too, rows
identified by their number over all files. Other data (``cache:DIR``, ``npy:DIR``,
``synthetic``), already encoded, is scored in the order of the dataset by row number.
"""

from __future__ import annotations

import contextlib
import csv
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from fastme._atomic import replace_on_success
from fastme.data.dataset import load_vocab
from fastme.data.encode import indices
from fastme.data.raw import (CRITEO_CAT, CRITEO_COLUMNS, CRITEO_INT, FORMATS, _damaged,
                             _first_line, _Malformed, _open, avazu_columns, empty_to_null,
                             make_format)
from fastme.ops._validation import bounds_check, get_bounds_check
from fastme.train.checkpoint import load_trained
from fastme.train.metrics import log_loss_from_logits, roc_auc
from fastme.train.trainer import resolve_device

BLOCK_BYTES = 16 << 20
_BOM = b"\xef\xbb\xbf"
_EXAMPLES = 5


@dataclass
class Layout:
    """How an input file's lines map onto the training format's columns."""

    kind: str                 # "criteo", "avazu" or "csv"
    delimiter: str
    header: bool              # first line is a header (not a row)
    columns: list[str]        # the file's columns, named as the training format names them
    id_column: str | None     # column that identifies a row (None: the row number)
    id_name: str              # output column names
    probability_name: str
    label: str | None = None  # the label column's name (None: "label" or "click")
    header_names: list[str] | None = None  # the file's own column names (a header line)
    id_start: int = 0         # id of the first row, when rows are identified by their number

    @property
    def labeled(self) -> bool:
        if self.label is not None:
            return self.label in self.columns
        return "label" in self.columns or "click" in self.columns

    @property
    def id_index(self) -> int:
        return (self.header_names or self.columns).index(self.id_column)

    def with_ids(self, path: Path, id_start: int | None, id_column: str | None) -> Layout:
        """This layout with the ids the user asked for (``--id-start`` / ``--id-column``);
        ValueError naming the option where the file cannot have them."""
        if id_column is not None:
            if not self.header:
                raise ValueError(f"--id-column: {path} has no header line, so no column is "
                                 f"named {id_column!r}; its rows are numbered, --id-start N "
                                 f"sets the first row's id")
            if id_column not in self.header_names:
                raise ValueError(f"--id-column: {path} has no column {id_column!r} (its "
                                 f"columns: {', '.join(self.header_names)})")
            return replace(self, id_column=id_column, id_name=id_column)
        if id_start is not None:
            if self.id_column is not None:
                raise ValueError(f"--id-start: {path} has its own id column {self.id_column!r}, "
                                 f"whose values are written as they are")
            # ids of the competition's submission file: Id,Predicted
            return replace(self, id_name="Id", probability_name="Predicted", id_start=id_start)
        return self


def detect_layout(kind: str, path: Path, fmt=None) -> Layout:
    """The layout of ``path`` from its first line; ValueError naming the file when unknown.
    ``fmt``: the training format (fastme.data.raw.make_format) with the file's read options
    (Avazu's ``header``); a CSV file's columns are its header, which ``fmt`` has read."""
    if kind == "csv":
        return Layout("csv", fmt.delimiter, True, fmt.columns, None, "row", "probability",
                      fmt.label, header_names=fmt.columns)
    first = _first_line(path).rstrip(b"\r").decode("utf-8", errors="replace")
    if kind == "criteo":
        if "\t" in first or "," not in first:
            n = first.count("\t") + 1
            if n == len(CRITEO_COLUMNS):
                return Layout("criteo", "\t", False, CRITEO_COLUMNS, None, "row",
                              "probability")
            if n == len(CRITEO_COLUMNS) - 1:
                return Layout("criteo", "\t", False, CRITEO_COLUMNS[1:], None, "row",
                              "probability")
            raise ValueError(f"{path}: the first line has {n} tab-separated columns; a Criteo "
                             f"file has 40 (label, I1..I13, C1..C26) or 39 (the test file)")
        names = first.split(",")
        features = CRITEO_INT + CRITEO_CAT
        if names in (["Id", "Label"] + features, ["Id"] + features):  # the train or test CSV
            columns = ["Id"] + (["label"] if names[1] == "Label" else []) + features
            return Layout("criteo", ",", True, columns, "Id", "Id", "Predicted",
                          header_names=names)
        raise ValueError(f"{path}: comma-separated, but the header {first[:120]!r} is not the "
                         f"Criteo competition's CSV (Id,Label,I1..I13,C1..C26 or Id,I1..C26)")
    header = fmt.header if fmt is not None else True
    columns = avazu_columns(path, first, header, labeled=False)
    return Layout("avazu", ",", header, columns, "id", "id", "click", "click",
                  header_names=columns if header else None)


def _line_blocks(path: Path, block_bytes: int):
    """Yield (lines as a list of bytes, bytes of the file on disk consumed so far) in input order.
    Every line is returned, empty ones included, so that row numbers are line numbers. Input
    compressed with gzip, bz2 or zstd is recognised as in training (fastme.data.raw)."""
    raw, source, codec = _open(path)
    with raw:
        tail, start = b"", True
        while True:
            try:
                chunk = source.read(block_bytes)
            except (OSError, EOFError, pa.ArrowInvalid) as exc:  # truncated or corrupt stream
                raise _damaged(path, codec, exc) from exc
            if not chunk:
                if tail:
                    yield [tail.rstrip(b"\r")], raw.tell()
                return
            if start:  # a byte-order mark is not part of the first row
                chunk, start = chunk.removeprefix(_BOM), False
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            yield [line[:-1] if line.endswith(b"\r") else line for line in lines], raw.tell()


def _as_strings(lines: list[bytes], bad_encoding: np.ndarray) -> pa.Array:
    """The lines as a UTF-8 string array; a line that is not UTF-8 becomes "" and is flagged."""
    try:
        return pa.array(lines, pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:
        decoded = []
        for i, line in enumerate(lines):
            try:
                decoded.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                bad_encoding[i] = True
                decoded.append("")
        return pa.array(decoded, pa.string())


@dataclass
class Summary:
    """What one scoring run did (the rows themselves go to the output file)."""

    rows: int = 0
    scored: int = 0
    malformed: dict = field(default_factory=dict)
    malformed_examples: list = field(default_factory=list)
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

    def __init__(self, checkpoint, *, vocab_dir=None, backend: str = "reference",
                 device: str = "cpu", batch_size: int = 8192):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = resolve_device(device)
        self.model, ckpt = load_trained(checkpoint, backend=backend, device=self.device)
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
        with bounds_check("off" if in_range else get_bounds_check()):
            for start in range(0, len(x), self.batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[start:start + self.batch_size],
                                                           dtype=np.int64)).to(self.device)
                out[start:start + len(xb)] = self.model(xb).double().cpu().numpy()
        return out

    # -- raw files ---------------------------------------------------------------------------
    def _training_format(self, kind: str, path: Path, read_options: dict):
        """The training run's format (its recorded options) reading ``path``, laid out as
        ``read_options`` say (the format's READ_OPTIONS, e.g. Avazu's header=none)."""
        trained = self.source.get("dataset")
        if trained != kind:
            raise ValueError(f"the model was trained on {trained or 'already encoded'} data, not "
                             f"on raw {kind} files, so it has no {kind} vocabulary; score "
                             + (f"{trained}:PATH files" if trained in (*FORMATS, "parquet")
                                else "encoded data (cache:DIR, npy:DIR)") + " with it")
        allowed = FORMATS[kind].READ_OPTIONS
        unknown = sorted(set(read_options) - set(allowed))
        if unknown:
            raise ValueError(f"predicting {kind} files takes no option {', '.join(unknown)} "
                             f"(the training run's options apply; "
                             + (f"allowed: {', '.join(allowed)})" if allowed else "none allowed)"))
        options = {k: v for k, v in (self.source.get("options") or {}).items()
                   if k in FORMATS[kind].OPTIONS}
        return make_format(kind, path, {**options, **read_options}, labeled=False)

    def vocabulary(self) -> list[pa.Array]:
        if self._vocab is None:
            where = self._vocab_dir or self.source.get("cache_dir")
            vocab = load_vocab(where) if where else None
            if vocab is None:
                raise ValueError(f"the training cache's vocabulary (vocab.json) is not at "
                                 f"{where!r}; pass the training cache directory (--vocab DIR)")
            if [len(v) + 2 for v in vocab] != list(self.spec.field_dims):
                raise ValueError(f"the vocabulary in {where} does not fit the model: it gives "
                                 f"field_dims {[len(v) + 2 for v in vocab][:6]}..., the model "
                                 f"has {list(self.spec.field_dims)[:6]}...")
            self._vocab = [pa.array(v) for v in vocab]
        return self._vocab

    def iter_raw(self, kind: str, path, *, block_bytes: int = BLOCK_BYTES,
                 summary: Summary | None = None, progress: bool = False,
                 options: dict | None = None, id_start: int | None = None,
                 id_column: str | None = None):
        """Score a raw file block by block: yields (layout, ids, logits, labels) arrays, one
        entry per input row in input order; a malformed row has logit NaN (label NaN too;
        labels is None for an unlabeled file). ``options``: how the file is laid out (the
        format's READ_OPTIONS, e.g. ``{"header": "none"}`` for Avazu). Rows are identified by
        the file's id column, or ``id_column``, or by their number counted from ``id_start``
        (default 0)."""
        from tqdm.auto import tqdm

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
        fmt = self._training_format(kind, path, options or {})
        vocab = self.vocabulary()
        layout = detect_layout(kind, path, fmt).with_ids(path, id_start, id_column)
        summary = summary if summary is not None else Summary()
        bad = _Malformed()
        n_cols = len(layout.columns)
        row, first = 0, True
        started = time.perf_counter()
        with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, disable=not progress,
                  desc=f"predict {path.name}", mininterval=1.0) as bar:
            done = 0
            for lines, position in _line_blocks(path, block_bytes):
                bar.update(position - done)
                done = position
                if first and layout.header:
                    lines = lines[1:]
                first = False
                if not lines:
                    continue
                n = len(lines)
                bad_encoding = np.zeros(n, dtype=bool)
                cells = pc.split_pattern(_as_strings(lines, bad_encoding), layout.delimiter)
                counts = pc.list_value_length(cells).to_numpy(zero_copy_only=False)
                whole = (counts == n_cols) & ~bad_encoding
                self._note_bad_lines(lines, counts, bad_encoding, n_cols, row, summary)
                if layout.id_column is None:
                    ids = np.arange(row, row + n, dtype=np.int64) + layout.id_start
                else:  # a line too short to have the id cell gets an empty id
                    ids = pc.list_slice(cells, layout.id_index, layout.id_index + 1,
                                        return_fixed_size_list=True).flatten()
                logits = np.full(n, np.nan)
                labels = np.full(n, np.nan) if layout.labeled else None
                if whole.any():
                    flat = cells.filter(pa.array(whole)).flatten()
                    columns = [flat.take(pa.array(np.arange(j, len(flat), n_cols)))
                               for j in range(n_cols)]
                    columns = [empty_to_null(c) for c in columns]  # as the reader gives them
                    batch = pa.RecordBatch.from_arrays(columns, names=layout.columns)
                    if not layout.labeled:  # the parser wants a label; it is never used
                        zeros = pa.array(np.zeros(batch.num_rows, dtype=np.int8)).cast(pa.string())
                        batch = pa.RecordBatch.from_arrays(
                            batch.columns + [zeros], names=layout.columns + [fmt.label])
                    kept, y, values = fmt.parse(batch, bad)
                    kept = np.asarray(kept.to_numpy(zero_copy_only=False), dtype=bool)
                    x = np.stack([indices(v, k) for v, k in zip(values, vocab)], axis=1)
                    where = np.flatnonzero(whole)[kept]
                    logits[where] = self.logits(x, in_range=True)
                    if labels is not None:
                        labels[where] = y
                row += n
                summary.rows += n
                summary.scored += int(np.isfinite(logits).sum())
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(rows=f"{summary.rows:,}",
                                rows_per_s=f"{summary.rows / elapsed:,.0f}", refresh=False)
                yield layout, ids, logits, labels
        for reason in ("bad_label", "bad_integer", "bad_hour"):
            if getattr(bad, reason):
                summary.malformed[reason] = getattr(bad, reason)
        summary.malformed_examples += bad.examples[:_EXAMPLES]

    @staticmethod
    def _note_bad_lines(lines, counts, bad_encoding, n_cols, row, summary):
        wrong = (counts != n_cols) & ~bad_encoding
        for reason, mask in (("column_count", wrong), ("encoding", bad_encoding)):
            k = int(mask.sum())
            if not k:
                continue
            summary.malformed[reason] = summary.malformed.get(reason, 0) + k
            for i in np.flatnonzero(mask)[:_EXAMPLES - len(summary.malformed_examples)]:
                what = (f"{counts[i]} columns, expected {n_cols}" if reason == "column_count"
                        else "not UTF-8")
                summary.malformed_examples.append(
                    f"row {row + i}: {what}: {lines[i][:60]!r}")

    # -- Parquet ---------------------------------------------------------------------------
    def iter_parquet(self, spec: str, *, summary: Summary | None = None,
                     progress: bool = False, id_start: int | None = None,
                     id_column: str | None = None):
        """Score Parquet file(s) with the training cache's vocabulary and column options:
        yields (None, ids, logits, labels or None); the ids are the rows' numbers over all files
        counted from ``id_start`` (default 0), or the values of the column ``id_column``."""
        import pyarrow.parquet as pq
        from tqdm.auto import tqdm

        from fastme.data.sources import ParquetSource, expand_paths

        if self.source.get("dataset") != "parquet":
            raise ValueError(f"the model was trained on {self.source.get('dataset') or 'encoded'}"
                             f" data, not on Parquet files, so it has no Parquet vocabulary")
        options = self.source.get("options") or {}
        source = ParquetSource(expand_paths(spec), options.get("label", "label"),
                               options.get("fields"), options.get("integer", ()))
        if id_column is not None and id_column not in pq.read_schema(source.files[0]).names:
            raise ValueError(f"--id-column: {source.files[0]} has no column {id_column!r} (its "
                             f"columns: {', '.join(pq.read_schema(source.files[0]).names)})")
        vocab = self.vocabulary()
        summary = summary if summary is not None else Summary()
        first = id_start or 0
        with tqdm(total=source.estimated_rows(), unit="row",
                  unit_scale=True, disable=not progress, desc="predict parquet") as bar:
            for file in source.files:
                # the id column read alongside, in batches of the same rows
                id_batches = (pq.ParquetFile(file).iter_batches(batch_size=source.batch_rows,
                                                               columns=[id_column])
                              if id_column is not None else None)
                for labels, values in source.batches(file, need_label=False):
                    x = np.stack([indices(v, k) for v, k in zip(values, vocab)], axis=1)
                    n = len(x)
                    if id_batches is None:
                        ids = np.arange(first + summary.rows, first + summary.rows + n)
                    else:
                        ids = next(id_batches).column(0)
                        if len(ids) != n:
                            raise RuntimeError(f"{file}: the id column's batches do not match")
                    summary.rows += n
                    summary.scored += n
                    bar.update(n)
                    yield None, ids, self.logits(x, in_range=True), labels

    # -- datasets ----------------------------------------------------------------------------
    def iter_dataset(self, data, *, summary: Summary | None = None, block_rows: int = 1 << 18,
                     progress: bool = False, id_start: int | None = None):
        """Score a :class:`~fastme.data.CTRData` in its row order: yields (None, row numbers
        counted from ``id_start`` (default 0), logits, labels)."""
        from tqdm.auto import tqdm

        if list(data.field_dims) != list(self.spec.field_dims):
            raise ValueError(f"{data.name} has field_dims {list(data.field_dims)[:6]}..., the "
                             f"model {list(self.spec.field_dims)[:6]}...; score data encoded "
                             f"with the training vocabulary")
        summary = summary if summary is not None else Summary()
        x, y = data.base_arrays()
        rows = data.row_numbers()
        with tqdm(total=len(rows), unit="row", unit_scale=True, disable=not progress,
                  desc=f"predict {data.name}", mininterval=1.0) as bar:
            for start in range(0, len(rows), block_rows):
                r = rows[start:start + block_rows]
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


def predict(checkpoint, data: str, out=None, *, vocab_dir=None, cache_dir=None,
            backend: str = "reference", device: str = "cpu", batch_size: int = 8192,
            progress: bool = False, data_options: dict | None = None,
            id_start: int | None = None, id_column: str | None = None) -> Summary:
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
    loss over the well-formed rows.
    """
    if id_start is not None and id_column is not None:
        raise ValueError("--id-start and --id-column exclude each other: rows are identified "
                         "either by their number or by a column")
    if id_start is not None and (isinstance(id_start, bool) or int(id_start) != id_start
                                 or id_start < 0):
        raise ValueError(f"--id-start must be a non-negative integer, got {id_start!r}")
    kind, _, arg = str(data).partition(":")
    if id_column is not None and kind not in (*FORMATS, "parquet"):
        raise ValueError(f"--id-column: {data} is encoded data without named columns; its rows "
                         f"are numbered, --id-start N sets the first row's id")
    if kind in FORMATS and not arg:
        raise ValueError(f"give the file as {kind}:PATH, got {data!r}")
    predictor = Predictor(checkpoint, vocab_dir=vocab_dir, backend=backend, device=device,
                          batch_size=batch_size)
    summary = Summary()
    if kind in FORMATS:
        blocks = predictor.iter_raw(kind, arg, summary=summary, progress=progress,
                                    options=data_options, id_start=id_start,
                                    id_column=id_column)
    elif data_options:
        raise ValueError(f"data options ({', '.join(sorted(data_options))}) apply to raw files "
                         f"({', '.join(f'{k}:PATH' for k in FORMATS)}), not to {data!r}")
    elif kind == "parquet":
        blocks = predictor.iter_parquet(arg, summary=summary, progress=progress,
                                        id_start=id_start, id_column=id_column)
    else:
        from fastme.data import load_dataset

        blocks = predictor.iter_dataset(load_dataset(data, cache_dir=cache_dir),
                                        summary=summary, progress=progress, id_start=id_start)
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
        for layout, ids, logits, labels in blocks:
            if writer is not None:
                if handle.tell() == 0:
                    writer.writerow([layout.id_name, layout.probability_name] if layout
                                    else header)
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
    lines = [f"predict: {summary.rows:,} rows ({summary.scored:,} scored, {bad:,} malformed) "
             f"in {summary.seconds:.1f} s, {summary.rows_per_s:,.0f} rows/s"]
    if bad:
        lines.append("  malformed rows have an empty probability: "
                     + ", ".join(f"{k} {v:,}" for k, v in summary.malformed.items())
                     + ("; e.g. " + "; ".join(summary.malformed_examples[:3])
                        if summary.malformed_examples else ""))
    if summary.auc is not None:
        lines.append(f"  AUC {summary.auc:.5f}  logloss {summary.logloss:.5f} "
                     f"(over the well-formed labeled rows)")
    if summary.out:
        lines.append(f"  wrote {summary.out}")
    print("\n".join(lines), file=file, flush=True)
