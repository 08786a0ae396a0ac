"""Preprocessing of raw text files (Criteo's and Avazu's Kaggle files, a user's own CSV) into a
memory-mapped cache.

One streaming pass over the file with pyarrow's CSV reader (bounded memory: a few blocks of rows
at a time, plus the value counts), which validates the rows and hands each block to
:class:`fastme.data.encode.Encoder`; that writes int32 ``x`` and float32 ``y`` into ``.npy``
files and then maps the codes to the final indices over the binary file. The index layout (kept
values by count, OOV, missing) is described there; docs/data.md explains every choice.
"""

from __future__ import annotations

import codecs
import datetime
import queue
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fastme.data.cache import build_or_reuse, cache_path, file_fingerprint
from fastme.data.dataset import CTRData, write_meta
from fastme.data.encode import Encoder

CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
CRITEO_FIELD_NAMES = CRITEO_INT + CRITEO_CAT
CRITEO_COLUMNS = ["label"] + CRITEO_FIELD_NAMES
AVAZU_COLUMNS = ["id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain",
                 "site_category", "app_id", "app_domain", "app_category", "device_id", "device_ip",
                 "device_model", "device_type", "device_conn_type", "C14", "C15", "C16", "C17",
                 "C18", "C19", "C20", "C21"]
AVAZU_TEST_COLUMNS = [c for c in AVAZU_COLUMNS if c != "click"]
AVAZU_CAT = AVAZU_COLUMNS[3:]
DEFAULT_MIN_COUNT = {"criteo": 10, "avazu": 2, "csv": 1}

# A valid integer cell: what pyarrow's int64 parser takes (decimal, or 0x-hex), short enough
# never to overflow. Criteo's integer columns are all small decimals in practice.
_INTEGER = r"^-?([0-9]{1,18}|0[xX][0-9a-fA-F]{1,15})$"
_LABEL = pa.array(["0", "1"])
_POSITIVE = pa.array(["1"])
_NULL_STR = pa.scalar(None, pa.string())
_EXAMPLES = 5  # malformed rows quoted in the summary


class MalformedRowsWarning(RuntimeWarning):
    """Rows of a raw file were skipped (each counted by reason in the cache's meta.json)."""


#: Why a row is skipped, as counted in meta.json ("malformed") and named in the summary.
_REASONS = {"column_count": "wrong column count", "bad_label": "bad label",
            "bad_integer": "non-integer", "bad_hour": "bad hour", "bad_encoding": "not UTF-8"}


@dataclass
class _Malformed:
    """Rows skipped and why."""

    column_count: int = 0
    bad_label: int = 0
    bad_integer: int = 0
    bad_hour: int = 0
    bad_encoding: int = 0
    examples: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(getattr(self, reason) for reason in _REASONS)

    def note(self, text: str) -> None:
        if len(self.examples) < _EXAMPLES:
            self.examples.append(text)

    def as_dict(self) -> dict:
        return {"total": self.total, **{r: getattr(self, r) for r in _REASONS},
                "examples": self.examples}

    def summary(self) -> str:
        """The reasons that occurred, e.g. "wrong column count 2, bad label 1"."""
        return ", ".join(f"{text} {getattr(self, r):,}" for r, text in _REASONS.items()
                         if getattr(self, r))


def _count_true(mask) -> int:
    return int(pc.sum(mask).as_py() or 0)


def empty_to_null(col: pa.Array) -> pa.Array:
    """Empty strings as nulls (the reader does this while parsing; predict's own splitter not)."""
    return pc.if_else(pc.equal(col, ""), _NULL_STR, col)


def _convert_options(columns: list[str]) -> pacsv.ConvertOptions:
    """Every cell read as text, so that a bad cell skips its row instead of failing its block;
    an empty cell is null (missing). (Text, not dictionaries: the reader's dictionaries are per
    parser block, and unifying them costs more than encoding each column once.)"""
    return pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                include_columns=columns, strings_can_be_null=True,
                                null_values=[""], quoted_strings_can_be_null=False)


def _first_bad(col: pa.Array, bad) -> str:
    return col.filter(bad)[0].as_py()


# ---- the two formats ----------------------------------------------------------------------------

class _Format:
    """How one raw format is read and turned into labels + per-field value arrays.

    ``rows(batch, bad)`` drops malformed rows (counting them in ``bad``) and returns (labels,
    [one pyarrow array per field, null = missing]). Integer-derived fields are int64 arrays,
    categorical ones strings; the vocabulary keeps each field's type. ``parse`` also returns the
    boolean mask of the rows kept (prediction keeps every input row's place). Batches hold text
    cells, empty ones as nulls.
    """

    kind: str
    delimiter: str
    label: str
    columns: list[str]  # of every line
    header: bool  # whether the first line names the columns
    field_names: list[str]
    #: Options of the format (``make_format``); ``options()`` records those that decide the
    #: encoding in the cache's meta.json, where prediction finds them again.
    OPTIONS: tuple = ()
    #: Options that only say how one file is laid out: prediction takes them for its input.
    READ_OPTIONS: tuple = ()
    label_values, positive = _LABEL, _POSITIVE  # label cells accepted; those meaning a click

    @classmethod
    def from_options(cls, path, options: dict, labeled: bool) -> _Format:
        return cls(**options)

    def options(self) -> dict:
        return {}

    def convert_options(self) -> pacsv.ConvertOptions:
        raise NotImplementedError

    def check_header(self, path: Path, first_line: bytes) -> None:
        """Raise ValueError when the file clearly is not of this format."""

    def rows(self, batch, bad):
        _, labels, fields = self.parse(batch, bad)
        return labels, fields

    def parse(self, batch, bad: "_Malformed"):
        """(kept-row mask, labels, fields) of a batch; see the class docstring."""
        raise NotImplementedError

    def _label_ok(self, batch, bad: _Malformed):
        ok = pc.fill_null(pc.is_in(batch.column(self.label), value_set=self.label_values), False)
        n_bad = len(ok) - _count_true(ok)
        if n_bad:
            bad.bad_label += n_bad
            bad.note(f"label {_first_bad(batch.column(self.label), pc.invert(ok))!r} "
                     f"is not 0 or 1")
        return ok

    def _labels(self, batch) -> np.ndarray:
        return pc.is_in(batch.column(self.label), value_set=self.positive).to_numpy(
            zero_copy_only=False).astype(np.float32)

    @staticmethod
    def _integers(batch, names, ok, bad: _Malformed):
        """(the rows kept, {name: integer field}): ``names`` validated and bucketized like
        Criteo's I1..I13; a row with a non-integer cell is dropped and counted."""
        ints, int_ok = {}, None
        for name in names:
            ints[name], good, example = integer_field(batch.column(name))
            if good is not None:
                int_ok = good if int_ok is None else pc.and_(int_ok, good)
                bad.note(f"{name} {example!r} is not an integer")
        if int_ok is not None:
            bad.bad_integer += _count_true(pc.and_(ok, pc.invert(int_ok)))
            ok = pc.and_(ok, int_ok)
        return ok, ints


class CriteoFormat(_Format):
    """Kaggle Display Advertising Challenge ``train.txt``: tab-separated, no header, label,
    I1..I13 (integers), C1..C26 (hashed categories); any cell may be empty."""

    kind, delimiter, label = "criteo", "\t", "label"
    columns, header = CRITEO_COLUMNS, False

    def __init__(self):
        self.field_names = CRITEO_FIELD_NAMES

    def check_header(self, path, first_line):
        if b"\t" in first_line or first_line.count(b",") < len(CRITEO_COLUMNS) - 1:
            return
        what = ("the Kaggle competition's comma-separated train.csv (Id,Label,I1..I13,C1..C26)"
                if first_line.lower().startswith(b"id,label,i1,") else
                f"comma-separated with {first_line.count(b',') + 1} columns")
        raise ValueError(
            f"{path} is {what}, but criteo: reads the tab-separated train.txt of the Display "
            f"Advertising Challenge (label, I1..I13, C1..C26, no header). Convert it with: "
            f"tail -n +2 {path.name} | cut -d, -f2- | tr , '\\t' > train.txt")

    def convert_options(self):
        return _convert_options(CRITEO_COLUMNS)

    def parse(self, batch, bad):
        ok, ints = self._integers(batch, CRITEO_INT, self._label_ok(batch, bad), bad)
        if _count_true(ok) < batch.num_rows:
            batch = batch.filter(ok)
            ints = {name: field.filter(ok) for name, field in ints.items()}
        fields = [ints[name] for name in CRITEO_INT] + [batch.column(name) for name in CRITEO_CAT]
        return ok, self._labels(batch), fields


def integer_field(col: pa.Array):
    """An integer column (text, null = empty) as a dictionary array of its tokens
    (:func:`criteo_integer_tokens`), with the mask of rows whose cell is an integer and an
    example of one that is not (None, None when all are). A column holds a few thousand distinct
    cells, so validating and transforming each distinct cell once is cheap."""
    encoded = pc.dictionary_encode(col)
    cells = encoded.dictionary
    try:
        return pa.DictionaryArray.from_arrays(encoded.indices,
                                              criteo_integer_tokens(cells)), None, None
    except pa.ArrowInvalid:
        pass
    # Only when the parser refuses a cell: a pattern that accepts a subset of what it takes.
    good = pc.match_substring_regex(cells, _INTEGER)
    tokens = criteo_integer_tokens(pc.if_else(good, cells, "0"))  # bad rows are dropped
    rows_ok = pc.fill_null(pc.take(good, encoded.indices), True)
    example = cells.filter(pc.invert(good))[0].as_py()
    return pa.DictionaryArray.from_arrays(encoded.indices, tokens), rows_ok, example


def criteo_integer_tokens(col: pa.Array) -> pa.Array:
    """The Criteo winners' discretisation of an integer column (strings, already validated):
    v > 2 -> floor(ln(v)^2) (>= 1), v <= 2 -> v - 2 (<= 0, so 2, 1, 0, -1 stay distinct values
    and never collide with the log branch), empty or null -> null (missing)."""
    parsed = pc.cast(empty_to_null(col), pa.int64())
    v = pc.fill_null(parsed, 0).to_numpy()
    with np.errstate(invalid="ignore"):
        logv = np.log(np.maximum(v, 3).astype(np.float64))
    tokens = np.where(v > 2, np.floor(logv * logv).astype(np.int64), v - 2)
    mask = parsed.is_null().to_numpy(zero_copy_only=False) if parsed.null_count else None
    return pa.array(tokens, type=pa.int64(), mask=mask)


def header_option(value) -> bool:
    """The ``header`` option: whether the first line names the columns ("present", the default)
    or is a row like the others ("none")."""
    if value in ("none", None, False):
        return False
    if value in ("present", True):
        return True
    raise ValueError(f"header must be 'none' (the file has no header line) or 'present', "
                     f"got {value!r}")


_HEADER_NONE = "header=none (--data-option header=none)"


def avazu_columns(path, first_line: str, header: bool = True, labeled: bool = True) -> list[str]:
    """The columns of an Avazu file, told by its first line: the train file's (id, click, hour,
    C1..C21) or, unless ``labeled``, the test file's (the same without click). Without a header
    line (``header=False``) the first row's column count tells them apart (24 or 23).
    ValueError naming the file, and the option header=none where it may be what is missing."""
    cells = first_line.split(",")
    layouts = [AVAZU_COLUMNS] if labeled else [AVAZU_COLUMNS, AVAZU_TEST_COLUMNS]
    expected = repr(",".join(AVAZU_COLUMNS)) + ("" if labeled else " or the same without click")
    test_file = (f"{path} is Avazu's test file (no click column): it has no labels to train on; "
                 f"score it with fastme predict")
    if header:
        if cells in layouts:
            return cells
        if cells == AVAZU_TEST_COLUMNS:
            raise ValueError(test_file)
        row = cells[0].isdigit() and len(cells) in (len(AVAZU_COLUMNS), len(AVAZU_TEST_COLUMNS))
        what = (f"{path} does not look like {'the' if labeled else 'an'} Avazu "
                f"{'train' if labeled else 'train or test'} file")
        if row:
            raise ValueError(f"{what}: its first line looks like a row, not a header "
                             f"({first_line[:100]!r}); for a file without a header line, pass "
                             f"the option {_HEADER_NONE}. The header expected is {expected}")
        raise ValueError(f"{what}: its header is {first_line[:200]!r}, expected {expected}. For "
                         f"a file without a header line, pass the option {_HEADER_NONE}")
    if cells in layouts or cells == AVAZU_TEST_COLUMNS:
        raise ValueError(f"{path} has a header line ({first_line[:80]!r}...): leave out the "
                         f"option header=none")
    for names in layouts:
        if len(cells) == len(names):
            return list(names)
    if len(cells) == len(AVAZU_TEST_COLUMNS):
        raise ValueError(test_file)
    raise ValueError(f"{path} does not look like an Avazu file without a header line: its first "
                     f"line has {len(cells)} comma-separated columns, expected "
                     f"{len(AVAZU_COLUMNS)} (id, click, hour, C1..C21)"
                     + ("" if labeled else f" or {len(AVAZU_TEST_COLUMNS)} (without click)"))


class AvazuFormat(_Format):
    """Kaggle Avazu ``train``: comma-separated with a header; id (dropped), click (label), hour
    (YYMMDDHH) and 21 categorical columns.

    ``hour="split"``: hour-of-day (0-23) and weekday (0 = Monday) fields in place of hour.
    ``hour="raw"``: the YYMMDDHH string as one categorical field (the reference code).
    ``header="none"``: the file has no header line (its rows are still the 24 columns).
    """

    kind, delimiter, label = "avazu", ",", "click"
    columns = AVAZU_COLUMNS  # check_header: the header is exactly these names
    OPTIONS, READ_OPTIONS = ("hour", "header"), ("header",)

    def __init__(self, hour: str = "split", header="present"):
        if hour not in ("split", "raw"):
            raise ValueError(f"hour must be 'split' or 'raw', got {hour!r}")
        self.hour = hour
        # Not among options(): it changes no index (a file's content tells whether it has one).
        self.header = header_option(header)
        self.field_names = (["hour_of_day", "weekday"] if hour == "split" else ["hour"]) + AVAZU_CAT

    def options(self) -> dict:
        return {"hour": self.hour}

    def convert_options(self):
        # id is never read into memory (and overflows int64 anyway)
        return _convert_options(AVAZU_COLUMNS[1:])

    def check_header(self, path, first_line):
        avazu_columns(path, first_line.decode("utf-8", "replace").rstrip("\r\n"), self.header)

    def parse(self, batch, bad):
        ok = self._label_ok(batch, bad)
        if self.hour == "split":
            hour = batch.column("hour")
            known, hour_of_day, weekday = _valid_hours(hour)
            good = pc.is_in(hour, value_set=known)
            rejected = pc.and_(ok, pc.invert(good))
            n_rejected = _count_true(rejected)
            if n_rejected:
                bad.bad_hour += n_rejected
                bad.note(f"hour {_first_bad(hour, rejected)!r} is not a YYMMDDHH date and hour")
            ok = pc.and_(ok, good)
        if _count_true(ok) < batch.num_rows:
            batch = batch.filter(ok)
        if self.hour == "split":
            where = pc.index_in(batch.column("hour"), value_set=known).to_numpy(
                zero_copy_only=False)
            fields = [pa.array(hour_of_day[where]), pa.array(weekday[where])]
        else:
            fields = [batch.column("hour")]
        fields += [batch.column(name) for name in AVAZU_CAT]
        return ok, self._labels(batch), fields


def _valid_hours(hour: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The block's distinct hour cells that are real YYMMDDHH times, with their hour of day and
    weekday (0 = Monday). A file holds a few hundred distinct hours, so each is checked once with
    the strict ``datetime.strptime`` (which refuses 14022900, unlike a rolling-over parser)."""
    known, hour_of_day, weekday = [], [], []
    for value in pc.unique(hour).to_pylist():
        if value is None or not re.fullmatch(r"[0-9]{8}", value):
            continue
        try:
            stamp = datetime.datetime.strptime(value, "%y%m%d%H")
        except ValueError:
            continue
        known.append(value)
        hour_of_day.append(stamp.hour)
        weekday.append(stamp.weekday())
    return (pa.array(known, pa.string()), np.array(hour_of_day, dtype=np.int64),
            np.array(weekday, dtype=np.int64))


def column_list(value, option: str) -> list[str]:
    """A list of column names given as a list or as one comma-separated string (``a,b,c``, as
    ``--data-option fields=a,b,c`` gives it)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [name for name in value.split(",") if name]
    if isinstance(value, (list, tuple)):
        return [str(name) for name in value]
    raise ValueError(f"{option} must be a list of column names or 'a,b,c', got {value!r}")


_DELIMITERS = {"tab": "\t", "\\t": "\t"}


class CsvFormat(_Format):
    """A user's own delimited text file (``csv:PATH``): a header line naming the columns, one
    0/1 label column (``label``, default "label"), every other column (or only those of
    ``fields``) a categorical field, the columns of ``integer`` (a subset of the fields) counts
    bucketized like Criteo's I1..I13. Cells are not quoted: a ``"`` is part of its cell.

    The columns come from the file's header line (``path``); ``labeled=False`` (prediction)
    lets the file lack the label column.
    """

    kind = "csv"
    header = True
    OPTIONS = ("label", "fields", "integer", "delimiter")
    label_values = pa.array(["0", "1", "0.0", "1.0", "false", "true", "False", "True", "FALSE",
                             "TRUE"])
    positive = pa.array(["1", "1.0", "true", "True", "TRUE"])

    @classmethod
    def from_options(cls, path, options, labeled):
        if path is None:
            raise ValueError("csv data needs its file (csv:PATH)")
        return cls(path, labeled=labeled, **options)

    def __init__(self, path, label="label", fields=None, integer=(), delimiter=",",
                 labeled: bool = True):
        self.path = _check_file(path)
        delimiter = _DELIMITERS.get(delimiter, delimiter)
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n":
            raise ValueError(f"delimiter must be one character (or 'tab'), got {delimiter!r}")
        self.delimiter, self.label = delimiter, str(label)
        self.columns = self._header(self.path, _first_line(self.path))
        fields = column_list(fields, "fields") or [c for c in self.columns if c != self.label]
        self.integer = column_list(integer, "integer")
        where = f"{self.path} (columns: {', '.join(self.columns)[:300]})"
        if labeled and self.label not in self.columns:
            hint = next((f"; is it {name}-separated? (option delimiter={name})"
                         for name, c in (("tab", "\t"), (";", ";"), ("|", "|"))
                         if len(self.columns) == 1 and c in self.columns[0]
                         and c != delimiter), "")
            raise ValueError(f"the label column {self.label!r} is not in {where} (option "
                             f"label=NAME){hint}")
        missing = [c for c in dict.fromkeys(fields + self.integer) if c not in self.columns]
        if missing:
            raise ValueError(f"no column {', '.join(map(repr, missing))} in {where}")
        if self.label in fields:
            raise ValueError(f"the label column {self.label!r} of {self.path} cannot be a field")
        if not fields:
            raise ValueError(f"{self.path} has no feature column besides the label "
                             f"{self.label!r}")
        not_fields = [c for c in self.integer if c not in fields]
        if not_fields:
            raise ValueError(f"integer column(s) {', '.join(map(repr, not_fields))} of "
                             f"{self.path} are not among the fields {fields}")
        self.field_names = fields

    def _header(self, path: Path, first_line: bytes) -> list[str]:
        names = first_line.decode("utf-8", "replace").rstrip("\r").split(self.delimiter)
        if '"' in first_line.decode("utf-8", "replace"):
            raise ValueError(f"{path}: the header line holds a '\"': csv: reads plain delimited "
                             f"text, without quoting (write it without quotes)")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{path}: the header names the column(s) {', '.join(twice)} twice")
        return names

    def options(self) -> dict:
        return {"label": self.label, "fields": self.field_names, "integer": self.integer,
                "delimiter": self.delimiter}

    def check_header(self, path, first_line):
        names = self._header(path, first_line)
        if names != self.columns:
            raise ValueError(f"{path} has the columns {names}, but {self.path} has "
                             f"{self.columns}: every file needs the same header")

    def convert_options(self):
        return _convert_options([self.label] + self.field_names)

    def parse(self, batch, bad):
        ok, ints = self._integers(batch, self.integer, self._label_ok(batch, bad), bad)
        if _count_true(ok) < batch.num_rows:
            batch = batch.filter(ok)
            ints = {name: field.filter(ok) for name, field in ints.items()}
        fields = [ints[name] if name in ints else batch.column(name)
                  for name in self.field_names]
        return ok, self._labels(batch), fields


#: Every raw text format by its spec prefix (``criteo:PATH``, ``avazu:PATH``, ``csv:PATH``).
FORMATS = {"criteo": CriteoFormat, "avazu": AvazuFormat, "csv": CsvFormat}
#: Options of every raw source beside the format's own (preprocess / load_raw_files).
COMMON_OPTIONS = ("min_count", "rebuild", "progress", "block_size")


def make_format(kind: str, path=None, options: dict | None = None, *,
                labeled: bool = True) -> _Format:
    """The reader of ``kind`` files with its format options (``FORMATS[kind].OPTIONS``); a CSV
    format reads its columns from ``path``'s header. ``labeled=False``: the file to read may
    lack the label (prediction)."""
    if kind not in FORMATS:
        raise ValueError(f"unknown raw format {kind!r}; expected one of {', '.join(FORMATS)}")
    cls, options = FORMATS[kind], dict(options or {})
    unknown = sorted(set(options) - set(cls.OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) for {kind} data: {', '.join(unknown)} (allowed: "
                        f"{', '.join(sorted(set(cls.OPTIONS) | set(COMMON_OPTIONS)))})")
    return cls.from_options(path, options, labeled)


# ---- reading ------------------------------------------------------------------------------------

# Compressed inputs are recognised by their first bytes, whatever the file is called.
_CODECS = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\x28\xb5\x2f\xfd": "zstd"}
_ARCHIVES = {b"\xfd7zXZ\x00": "an xz file", b"PK\x03\x04": "a zip archive"}

# Text that is not valid UTF-8 is read a second time through this decoder, which turns each bad
# byte into U+FFFD; rows holding one are then skipped and counted (``bad_encoding``). Only files
# that need it pay for the decoding.
_REPLACING = "fastme_utf8_replace"
_REPLACEMENT = "\ufffd"


class _ReplacingDecoder(codecs.BufferedIncrementalDecoder):
    def _buffer_decode(self, data, errors, final):
        return codecs.utf_8_decode(data, "replace", final)


def _find_codec(name):
    if name == _REPLACING:
        return codecs.CodecInfo(codecs.utf_8_encode,
                                lambda data, errors="replace": codecs.utf_8_decode(data, "replace",
                                                                                   True),
                                incrementaldecoder=_ReplacingDecoder, name=_REPLACING)
    return None


codecs.register(_find_codec)


class _NotUTF8(ValueError):
    """The file holds bytes that are not UTF-8: read it again with the replacing decoder (a
    ValueError naming the file for a caller that cannot)."""


def _check_file(path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"raw data file not found: {path}")
    if not path.is_file():
        raise ValueError(f"raw data path is not a file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"raw data file is empty: {path}")
    _compression(path)  # refuses archives it cannot read, before any work
    return path


def _compression(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, what in _ARCHIVES.items():
        if head.startswith(magic):
            raise ValueError(f"{path} is {what}; unpack it first (fastme reads plain text, or "
                             f"text compressed with gzip, bz2 or zstd)")
    for magic, codec in _CODECS.items():
        if head.startswith(magic):
            if not pa.Codec.is_available(codec):
                raise ValueError(f"{path} is {codec}-compressed, which this pyarrow build cannot "
                                 f"read; decompress it first")
            return codec
    return None


def _damaged(path: Path, codec: str | None, exc: Exception) -> ValueError:
    what = f"{codec} stream" if codec else "file"
    return ValueError(f"{path} is damaged: its {what} cannot be read to the end ({exc}); no cache "
                      f"was written. Download it again (for gzip, `gzip -t {path.name}` checks a "
                      f"file)")


def _open(path: Path):
    """(the file on disk, the text stream): Arrow's own file objects, so that reading never takes
    the GIL; the file's ``tell()`` is the position on disk, for the progress bar. Plain reads, not
    a memory map, so that the file's pages never count as the process's memory."""
    codec = _compression(path)
    raw = pa.OSFile(str(path))
    return raw, (pa.CompressedInputStream(raw, codec) if codec else raw), codec


def rows_estimate(path: Path) -> int | None:
    """About how many lines an uncompressed file holds (from its first MB); None if compressed."""
    if _compression(path):
        return None
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return int(path.stat().st_size * max(head.count(b"\n"), 1) / max(len(head), 1)) + 1


def _first_line(path: Path) -> bytes:
    raw, source, codec = _open(path)
    with raw:
        try:
            head = source.read(1 << 20)
        except (OSError, EOFError, pa.ArrowInvalid) as exc:
            raise _damaged(path, codec, exc) from exc
    # pyarrow skips a UTF-8 byte-order mark (as written by some Windows tools); so does this
    return head.removeprefix(codecs.BOM_UTF8).split(b"\n", 1)[0]


def _drop_undecodable(batch: pa.RecordBatch, bad: _Malformed) -> pa.RecordBatch:
    """Skip (and count) the rows where the replacing decoder had to stand in for a bad byte."""
    hit = None
    for col in batch.columns:
        found = pc.fill_null(pc.match_substring(col, _REPLACEMENT), False)  # null: an empty cell
        hit = found if hit is None else pc.or_(hit, found)
    n = _count_true(hit) if hit is not None else 0
    if not n:
        return batch
    bad.bad_encoding += n
    first = batch.filter(hit).to_pylist()[0]
    bad.note(f"a row holds bytes that are not UTF-8: "
             f"{next(v for v in first.values() if v and _REPLACEMENT in v)!r}")
    return batch.filter(pc.invert(hit))


# One parser thread takes this many bytes at a time: small blocks parse faster (they stay in the
# cache) and spread a piece of the file over every core.
_PARSE_BLOCK = 1 << 20


def _text_pieces(source, size: int):
    """The stream's bytes in pieces of about ``size`` bytes, each ending at a line end (the last
    one where the stream ends), as (piece, bytes read from the stream so far)."""
    rest = b""
    while True:
        data = source.read(size)
        if not data:
            if rest:
                yield rest
            return
        data = rest + data if rest else data
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # a line longer than ``size``: read on
            rest = data
            continue
        yield memoryview(data)[:cut]
        rest = data[cut:]


def _read_blocks(fmt: _Format, path: Path, block_size: int, bad: _Malformed, desc: str,
                 progress: bool, encoding: str = "utf8"):
    """Record batches of the raw file (about ``block_size`` bytes of text each), with a
    byte-based progress bar.

    A background thread cuts the text into pieces at line ends and parses each with pyarrow's
    multi-threaded CSV reader while the caller works on the batch before, so the caller's work
    and the parsing overlap and every core parses. At most three pieces are in memory.

    Raises :class:`_NotUTF8` when the file needs the replacing decoder, ValueError naming the file
    when it cannot be parsed or read to the end.
    """
    from tqdm.auto import tqdm

    undecodable = []
    lock = threading.Lock()  # the parser's threads call ``skip``

    def skip(row) -> str:
        with lock:
            bad.column_count += 1
            where = f"line {row.number}" if row.number and row.number > 0 else "a line"
            bad.note(f"{where} has {row.actual_columns} columns, expected "
                     f"{row.expected_columns}: {row.text[:80]!r}")
        return "skip"

    def unraisable(info):
        # pyarrow decodes a short row's text before calling ``skip``; a bad byte there is not an
        # error of the caller's to print but a sign to read the file with the replacing decoder.
        if isinstance(info.exc_value, UnicodeDecodeError):
            undecodable.append(info.exc_value)
        else:
            previous_hook(info)

    def failure(exc) -> Exception:
        if encoding == "utf8" and (undecodable or "UTF8" in str(exc) or "UTF-8" in str(exc)):
            return _NotUTF8(f"{path} holds bytes that are not UTF-8")
        return ValueError(f"cannot parse {path} as {fmt.kind} data: {exc}")

    fmt.check_header(path, _first_line(path))
    # Neither format quotes its cells: a stray '"' is an ordinary character of its cell, not the
    # start of a quoted field that would swallow the following lines.
    parse = pacsv.ParseOptions(delimiter=fmt.delimiter, quote_char=False,
                               invalid_row_handler=skip)
    convert = fmt.convert_options()
    raw, source, codec = _open(path)
    results: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def parse_pieces() -> None:
        pieces = _text_pieces(source, block_size)
        first = True
        while not stop.is_set():
            try:
                piece = next(pieces, None)
            except (OSError, EOFError, pa.ArrowInvalid) as exc:
                return put(("damaged", exc))
            if piece is None:
                return put(("done", None))
            options = pacsv.ReadOptions(column_names=fmt.columns,
                                        skip_rows=int(first and fmt.header),
                                        block_size=min(_PARSE_BLOCK, block_size),
                                        encoding=encoding)
            first = False
            try:
                table = pacsv.read_csv(pa.BufferReader(pa.py_buffer(piece)),
                                       read_options=options, parse_options=parse,
                                       convert_options=convert)
            except pa.ArrowInvalid as exc:
                if "Empty CSV file" in str(exc):  # a piece of blank lines, or a lone header
                    continue
                return put(("invalid", exc))
            except Exception as exc:  # noqa: BLE001 - raised in the caller's thread
                return put(("invalid", exc))
            put(("table", (table, raw.tell())))

    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    worker = threading.Thread(target=parse_pieces, name=f"fastme-parse-{path.name}", daemon=True)
    try:
        with raw, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc,
                       disable=not progress, mininterval=1.0) as bar:
            worker.start()
            done = 0
            while True:
                what, item = results.get()
                if what == "done":
                    break
                if what == "damaged":
                    raise _damaged(path, codec, item) from item
                if what == "invalid":
                    raise failure(item) from item
                table, position = item
                bar.update(position - done)
                done = position
                for batch in table.combine_chunks().to_batches():
                    yield _drop_undecodable(batch, bad) if encoding != "utf8" else batch
    finally:
        stop.set()
        if worker.ident is not None:  # started
            worker.join()
        sys.unraisablehook = previous_hook


# ---- the pipeline -------------------------------------------------------------------------------

def preprocess(kind: str, path, cache_dir=None, *, min_count: int | None = None,
               rebuild: bool = False, progress: bool = True, block_size: int = 32 << 20,
               **format_options) -> CTRData:
    """Preprocess a raw ``kind`` (a key of :data:`FORMATS`) file once and open its cache.

    The cache directory (under ``cache_dir``, default ``$FASTME_CACHE_DIR`` or
    ``~/.cache/fastme``) is keyed by the file's :func:`file_fingerprint` and by the options, and
    reused when it exists unless ``rebuild``. Building holds a lock (``<cache>.lock``): a second
    process asking for the same cache waits for the first and then reuses its result.

    Args:
        min_count: values seen fewer times map to the field's OOV index (default 10 for Criteo,
            2 for Avazu, 1 for CSV; the reference code uses 4 for Avazu).
        progress: progress bars and a summary on stderr.
        block_size: bytes of raw text parsed per block (bounds the working memory).
        format_options: the format's own (``FORMATS[kind].OPTIONS``): Avazu's ``hour``
            ("split": hour-of-day + weekday, or "raw": the reference code) and ``header``
            ("none": no header line); CSV's ``label``, ``fields``, ``integer``, ``delimiter``.
    """
    if kind not in FORMATS:
        raise ValueError(f"unknown raw format {kind!r}; expected one of {', '.join(FORMATS)}")
    min_count = DEFAULT_MIN_COUNT[kind] if min_count is None else min_count
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    path = _check_file(path)
    fmt = make_format(kind, path, format_options)
    options = {"min_count": int(min_count), **fmt.options()}
    fingerprint = file_fingerprint(path)
    # The key of raw caches: kind, options and content (the names of caches built before stay).
    directory = cache_path(cache_dir, f"{kind}-{path.name}", fingerprint, {"kind": kind, **options})
    skipped = []

    def build(tmp: Path) -> None:
        skipped.append(_build(fmt, path, tmp, directory, options, progress, block_size,
                              fingerprint))

    data = build_or_reuse(directory, fingerprint, build, name=kind, files=[path],
                          rebuild=rebuild)
    if skipped and skipped[0].total:
        bad = skipped[0]
        warnings.warn(f"{kind}: skipped {bad.total:,} malformed rows of {path} "
                      f"({bad.summary()}); e.g. " + "; ".join(bad.examples[:3]),
                      MalformedRowsWarning, stacklevel=2)
    return data


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _build(fmt: _Format, path: Path, tmp: Path, directory: Path, options: dict,
           progress: bool, block_size: int, fingerprint: str) -> _Malformed:
    """The one pass over the file into the empty directory ``tmp`` (published as ``directory``);
    returns the malformed rows skipped."""
    started = time.perf_counter()
    encoding = "utf8"
    try:
        bad, encoder = _encode(fmt, path, tmp, progress, block_size, encoding)
    except _NotUTF8:
        encoding = _REPLACING
        _say(progress, f"{fmt.kind}: {path} holds bytes that are not UTF-8; reading it again, "
                       f"skipping the rows that hold them")
        bad, encoder = _encode(fmt, path, tmp, progress, block_size, encoding)
    num_rows = encoder.num_rows
    if num_rows == 0:
        raise ValueError(f"{path} holds no valid {fmt.kind} rows ({bad.total:,} malformed; "
                         f"e.g. {'; '.join(bad.examples[:2]) or 'no data lines'})")
    read_s = time.perf_counter() - started
    vocab, field_dims, field_stats = encoder.finish(options["min_count"])
    seconds = time.perf_counter() - started
    info = {"dataset": fmt.kind,
            "source": {"path": str(path.resolve()), "size": path.stat().st_size,
                       "fingerprint": fingerprint, "utf8": encoding == "utf8"},
            "options": options, "positive_rate": encoder.positives / num_rows,
            "malformed": bad.as_dict(), "fields": field_stats,
            "build": {"seconds": seconds, "read_pass_seconds": read_s,
                      "rows_per_s": num_rows / seconds}}
    write_meta(tmp, fmt.field_names, field_dims, num_rows, info,
               vocab=[v.to_pylist() for v in vocab])
    _say(progress, f"{fmt.kind}: {num_rows:,} rows, {sum(field_dims):,} feature values in "
                   f"{len(field_dims)} fields; {seconds:.1f} s ({num_rows / seconds:,.0f} rows/s); "
                   f"cache {directory}")
    return bad


def _encode(fmt: _Format, path: Path, tmp: Path, progress: bool, block_size: int,
            encoding: str) -> tuple[_Malformed, Encoder]:
    """Read the file once, validating its rows, into an :class:`Encoder` writing to ``tmp``."""
    bad = _Malformed()
    with Encoder(tmp, fmt.field_names, estimated_rows=rows_estimate(path)) as encoder:
        for batch in _read_blocks(fmt, path, block_size, bad, f"{fmt.kind}: reading", progress,
                                  encoding):
            encoder.add(*fmt.rows(batch, bad))
    return bad, encoder
