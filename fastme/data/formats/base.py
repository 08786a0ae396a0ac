"""What a data format tells the rest of fastme: :class:`DataFormat` (every spec ``NAME[:ARG]``)
and :class:`TextFormat` (raw delimited text: Criteo, Avazu, CSV), with the pieces prediction
reads through (:class:`Layout`, :class:`RowBlock`, :class:`RowTally`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastme.data.encode import indices
from fastme.data.sources import is_multi_file, load_raw_files, preprocess
from fastme.data.text import (
    EXAMPLES,
    Malformed,
    as_strings,
    convert_options,
    count_true,
    empty_to_null,
    first_bad,
    integer_field,
    line_blocks,
)


class DataFormat:
    """One kind of dataset spec (``kind`` or ``kind:ARG``). The registry
    (:data:`fastme.data.formats.FORMATS`) holds the classes; only text formats are instantiated
    (a reader configured for one file)."""

    kind: str
    ARG: str | None = "PATH"  # what follows "kind:" (None: nothing does)
    HELP = ""  # said after the spec in the --data help
    #: Caches of this data lay every field out as [kept values..., OOV, missing] (export).
    OOV_LAYOUT = False
    #: fastme predict encodes this format's own rows with the training vocabulary.
    READS_ROWS = False
    #: Options fastme predict takes for a file (how it is laid out); None: no data options.
    READ_OPTIONS: tuple | None = None
    #: What ``fastme export`` says a model trained on this data was trained on.
    TRAINED_ON: str | None = None

    @classmethod
    def spec(cls) -> str:
        return f"{cls.kind}:{cls.ARG}" if cls.ARG else cls.kind

    @classmethod
    def load(cls, arg: str, spec: str, cache_dir, options: dict):
        """The :class:`~fastme.data.CTRData` of ``spec`` (``arg`` follows the colon)."""
        raise NotImplementedError

    @classmethod
    def read_rows(
        cls,
        arg: str,
        source: dict,
        vocabulary,
        tally: RowTally,
        *,
        progress: bool = False,
        options: dict | None = None,
        id_start: int | None = None,
        id_column: str | None = None,
        block_bytes: int = 16 << 20,
    ):
        """Prediction (formats that READS_ROWS): :class:`RowBlock` s of the rows of ``arg`` in
        input order, encoded with ``vocabulary()`` the way the training ``source`` (the
        checkpoint's record of its data) was; counts go to ``tally``."""
        raise NotImplementedError

    @classmethod
    def sidecar(cls, field_names: list, options: dict):
        """Export: (layout, per-field kinds, per-field columns) of the raw rows a model trained
        on this data scores, for the encoding sidecar; None when it has no raw rows."""
        return None


@dataclass
class RowTally:
    """Rows a prediction read, scored and found malformed (by reason, with examples)."""

    rows: int = 0
    scored: int = 0
    malformed: dict = field(default_factory=dict)
    malformed_examples: list = field(default_factory=list)


class RowBlock(NamedTuple):
    """One block of input rows: their output column names (None: the caller's), ids, number,
    the positions of the well-formed ones, whose indices are ``x``, and the labels (NaN where
    malformed; None for unlabeled data)."""

    names: tuple | None
    ids: object
    rows: int
    where: np.ndarray | None  # None: every row
    x: np.ndarray
    labels: np.ndarray | None


@dataclass
class Layout:
    """How an input file's lines map onto the training format's columns."""

    delimiter: str
    header: bool  # first line is a header (not a row)
    columns: list[str]  # the file's columns, named as the training format names them
    id_column: str | None  # column that identifies a row (None: the row number)
    id_name: str  # output column names
    probability_name: str
    label: str  # the label column's name
    header_names: list[str] | None = None  # the file's own column names (a header line)
    id_start: int = 0  # id of the first row, when rows are identified by their number

    @property
    def labeled(self) -> bool:
        return self.label in self.columns

    @property
    def id_index(self) -> int:
        return (self.header_names or self.columns).index(self.id_column)

    def with_ids(self, path: Path, id_start: int | None, id_column: str | None) -> Layout:
        """This layout with the ids the user asked for (``--id-start`` / ``--id-column``);
        ValueError naming the option where the file cannot have them."""
        if id_column is not None:
            if not self.header:
                raise ValueError(
                    f"--id-column: {path} has no header line, so no column is "
                    f"named {id_column!r}; its rows are numbered, --id-start N "
                    f"sets the first row's id"
                )
            if id_column not in self.header_names:
                raise ValueError(
                    f"--id-column: {path} has no column {id_column!r} (its "
                    f"columns: {', '.join(self.header_names)})"
                )
            return replace(self, id_column=id_column, id_name=id_column)
        if id_start is not None:
            if self.id_column is not None:
                raise ValueError(
                    f"--id-start: {path} has its own id column {self.id_column!r}, "
                    f"whose values are written as they are"
                )
            # ids of the competition's submission file: Id,Predicted
            return replace(self, id_name="Id", probability_name="Predicted", id_start=id_start)
        return self


class TextFormat(DataFormat):
    """A raw delimited text format: how it is read (fastme.data.text) and turned into labels +
    per-field value arrays.

    ``parse(batch, bad)`` drops malformed rows (counting them in ``bad``) and returns (the
    boolean mask of the rows kept, labels, [one pyarrow array per field, null = missing]).
    Integer-derived fields are int64 arrays, categorical ones strings; the vocabulary keeps each
    field's type. Batches hold text cells, empty ones as nulls.
    """

    delimiter: str
    label: str
    columns: list[str]  # of every line
    header: bool  # whether the first line names the columns
    field_names: list[str]
    integer: list[str] = ()  # the fields bucketized like Criteo's I1..I13
    READS_ROWS, READ_OPTIONS = True, ()
    MIN_COUNT = 1  # default min_count
    #: Options of the format (``configure``); ``options()`` records those that decide the
    #: encoding in the cache's meta.json, where prediction finds them again. READ_OPTIONS only
    #: say how one file is laid out: prediction takes them for its input.
    OPTIONS: tuple = ()
    #: Options of every raw source beside the format's own (preprocess / load_raw_files).
    COMMON_OPTIONS = ("min_count", "rebuild", "progress", "block_size")
    label_values = pa.array(["0", "1"])  # label cells accepted
    positive = pa.array(["1"])  # those meaning a click

    @classmethod
    def configure(
        cls, path=None, options: dict | None = None, *, labeled: bool = True
    ) -> TextFormat:
        """The reader with its format options (``OPTIONS``); a CSV format reads its columns
        from ``path``'s header. ``labeled=False``: the file to read may lack the label."""
        options = dict(options or {})
        cls.check_options(options)
        return cls.from_options(path, options, labeled)

    @classmethod
    def check_options(cls, options, what: str = "data", more: tuple = ()) -> None:
        """TypeError naming the options that are neither the format's own nor ``more``; it lists
        those with COMMON_OPTIONS, which every raw source takes."""
        unknown = sorted(set(options) - set(cls.OPTIONS) - set(more))
        if unknown:
            allowed = sorted(set(cls.OPTIONS) | set(cls.COMMON_OPTIONS) | set(more))
            raise TypeError(
                f"unknown option(s) for {cls.kind} {what}: {', '.join(unknown)} "
                f"(allowed: {', '.join(allowed)})"
            )

    @classmethod
    def from_options(cls, path, options: dict, labeled: bool) -> TextFormat:
        return cls(**options)

    @classmethod
    def load(cls, arg, spec, cache_dir, options):
        if not arg:
            raise ValueError(f"give the raw file as {cls.kind}:PATH, got {spec!r}")
        split = ("valid_files", "test_files")
        if is_multi_file(arg) or set(split) & set(options):
            cls.check_options(options, "files", cls.COMMON_OPTIONS + split)
            return load_raw_files(cls, arg, cache_dir, **options)
        cls.check_options(options, more=cls.COMMON_OPTIONS)
        return preprocess(cls, arg, cache_dir, **options)

    def options(self) -> dict:
        return {}

    def convert_options(self):
        return convert_options([self.label] + self.field_names)

    def check_header(self, path: Path, first_line: bytes) -> None:
        """Raise ValueError when the file clearly is not of this format (training)."""

    def layout(self, path: Path) -> Layout:
        """Prediction: the layout of ``path`` from its first line; ValueError naming the file
        when it is not one of this format's files."""
        raise NotImplementedError

    def parse(self, batch, bad: Malformed):
        """(kept-row mask, labels, fields) of a batch; see the class docstring. The ``integer``
        fields are validated and bucketized like Criteo's I1..I13 (a row with a non-integer cell
        is dropped and counted), the other fields taken as they are."""
        ok, ints, int_ok = self._label_ok(batch, bad), {}, None
        for name in self.integer:
            ints[name], good, example = integer_field(batch.column(name))
            if good is not None:
                int_ok = good if int_ok is None else pc.and_(int_ok, good)
                bad.note(f"{name} {example!r} is not an integer")
        if int_ok is not None:
            bad.bad_integer += count_true(pc.and_(ok, pc.invert(int_ok)))
            ok = pc.and_(ok, int_ok)
        if count_true(ok) < batch.num_rows:
            batch = batch.filter(ok)
            ints = {name: field.filter(ok) for name, field in ints.items()}
        fields = [ints[name] if name in ints else batch.column(name) for name in self.field_names]
        return ok, self._labels(batch), fields

    def _label_ok(self, batch, bad: Malformed):
        ok = pc.fill_null(pc.is_in(batch.column(self.label), value_set=self.label_values), False)
        n_bad = len(ok) - count_true(ok)
        if n_bad:
            bad.bad_label += n_bad
            bad.note(f"label {first_bad(batch.column(self.label), pc.invert(ok))!r} is not 0 or 1")
        return ok

    def _labels(self, batch) -> np.ndarray:
        return (
            pc.is_in(batch.column(self.label), value_set=self.positive)
            .to_numpy(zero_copy_only=False)
            .astype(np.float32)
        )

    @classmethod
    def read_rows(
        cls,
        arg,
        source,
        vocabulary,
        tally,
        *,
        progress=False,
        options=None,
        id_start=None,
        id_column=None,
        block_bytes=16 << 20,
    ):
        """The raw file read line by line in blocks, so that every input line keeps its place:
        a malformed line is a row without indices. Cells are validated, transformed and mapped
        to indices by the training pipeline's own parser, with the training run's options."""
        from tqdm.auto import tqdm

        path = Path(arg).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
        trained = {k: v for k, v in (source.get("options") or {}).items() if k in cls.OPTIONS}
        fmt = cls.configure(path, {**trained, **(options or {})}, labeled=False)
        vocab = vocabulary()
        layout = fmt.layout(path).with_ids(path, id_start, id_column)
        names = (layout.id_name, layout.probability_name)
        bad = Malformed()
        n_cols = len(layout.columns)
        row, first = 0, True
        started = time.perf_counter()
        with tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            disable=not progress,
            desc=f"predict {path.name}",
            mininterval=1.0,
        ) as bar:
            done = 0
            for lines, position in line_blocks(path, block_bytes):
                bar.update(position - done)
                done = position
                if first and layout.header:
                    lines = lines[1:]
                first = False
                if not lines:
                    continue
                n = len(lines)
                bad_encoding = np.zeros(n, dtype=bool)
                cells = pc.split_pattern(as_strings(lines, bad_encoding), layout.delimiter)
                counts = pc.list_value_length(cells).to_numpy(zero_copy_only=False)
                whole = (counts == n_cols) & ~bad_encoding
                _note_bad_lines(lines, counts, bad_encoding, n_cols, row, tally)
                if layout.id_column is None:
                    ids = np.arange(row, row + n, dtype=np.int64) + layout.id_start
                else:  # a line too short to have the id cell gets an empty id
                    ids = pc.list_slice(
                        cells, layout.id_index, layout.id_index + 1, return_fixed_size_list=True
                    ).flatten()
                labels = np.full(n, np.nan) if layout.labeled else None
                where, x = np.zeros(0, np.int64), np.zeros((0, len(vocab)), np.int64)
                if whole.any():
                    flat = cells.filter(pa.array(whole)).flatten()
                    columns = [
                        flat.take(pa.array(np.arange(j, len(flat), n_cols))) for j in range(n_cols)
                    ]
                    columns = [empty_to_null(c) for c in columns]  # as the reader gives them
                    batch = pa.RecordBatch.from_arrays(columns, names=layout.columns)
                    if not layout.labeled:  # the parser wants a label; it is never used
                        zeros = pa.array(np.zeros(batch.num_rows, dtype=np.int8)).cast(pa.string())
                        batch = pa.RecordBatch.from_arrays(
                            batch.columns + [zeros], names=layout.columns + [fmt.label]
                        )
                    kept, y, values = fmt.parse(batch, bad)
                    kept = np.asarray(kept.to_numpy(zero_copy_only=False), dtype=bool)
                    x = np.stack([indices(v, k) for v, k in zip(values, vocab)], axis=1)
                    where = np.flatnonzero(whole)[kept]
                    if labels is not None:
                        labels[where] = y
                row += n
                tally.rows += n
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(
                    rows=f"{tally.rows:,}", rows_per_s=f"{tally.rows / elapsed:,.0f}", refresh=False
                )
                yield RowBlock(names, ids, n, where, x, labels)
        for reason in ("bad_label", "bad_integer", "bad_hour"):
            if getattr(bad, reason):
                tally.malformed[reason] = getattr(bad, reason)
        tally.malformed_examples += bad.examples[:EXAMPLES]


def _note_bad_lines(lines, counts, bad_encoding, n_cols, row, tally: RowTally) -> None:
    wrong = (counts != n_cols) & ~bad_encoding
    for reason, mask in (("column_count", wrong), ("encoding", bad_encoding)):
        k = int(mask.sum())
        if not k:
            continue
        tally.malformed[reason] = tally.malformed.get(reason, 0) + k
        for i in np.flatnonzero(mask)[: EXAMPLES - len(tally.malformed_examples)]:
            what = (
                f"{counts[i]} columns, expected {n_cols}"
                if reason == "column_count"
                else "not UTF-8"
            )
            tally.malformed_examples.append(f"row {row + i}: {what}: {lines[i][:60]!r}")
