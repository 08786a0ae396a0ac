"""Reading raw delimited text (Criteo's and Avazu's Kaggle files, a user's own CSV): the
machinery every text format of :mod:`fastme.data.formats` shares, for training and prediction.

Files may be plain or compressed (gzip, bz2, zstd, told by their first bytes). Training reads a
file in blocks with pyarrow's CSV reader (:func:`read_blocks`, bounded memory: a few blocks of
rows at a time), which validates the rows; prediction reads it line by line
(:func:`line_blocks`) so that every line keeps its place. Bad rows are counted by reason
(:class:`Malformed`); docs/data.md explains every choice.
"""

from __future__ import annotations

import codecs
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# A valid integer cell: what pyarrow's int64 parser takes (decimal, or 0x-hex), short enough
# never to overflow. Criteo's integer columns are all small decimals in practice.
_INTEGER = r"^-?([0-9]{1,18}|0[xX][0-9a-fA-F]{1,15})$"
_NULL_STR = pa.scalar(None, pa.string())
EXAMPLES = 5  # malformed rows quoted in the summary


class MalformedRowsWarning(RuntimeWarning):
    """Rows of a raw file were skipped (each counted by reason in the cache's meta.json)."""


#: Why a row is skipped, as counted in meta.json ("malformed") and named in the summary.
_REASONS = {
    "column_count": "wrong column count",
    "bad_label": "bad label",
    "bad_integer": "non-integer",
    "bad_hour": "bad hour",
    "bad_encoding": "not UTF-8",
}


@dataclass
class Malformed:
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
        if len(self.examples) < EXAMPLES:
            self.examples.append(text)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            **{r: getattr(self, r) for r in _REASONS},
            "examples": self.examples,
        }

    def summary(self) -> str:
        """The reasons that occurred, e.g. "wrong column count 2, bad label 1"."""
        return ", ".join(
            f"{text} {getattr(self, r):,}" for r, text in _REASONS.items() if getattr(self, r)
        )


def count_true(mask) -> int:
    return int(pc.sum(mask).as_py() or 0)


def empty_to_null(col: pa.Array) -> pa.Array:
    """Empty strings as nulls (the reader does this while parsing; predict's own splitter not)."""
    return pc.if_else(pc.equal(col, ""), _NULL_STR, col)


def convert_options(columns: list[str]) -> pacsv.ConvertOptions:
    """Every cell read as text, so that a bad cell skips its row instead of failing its block;
    an empty cell is null (missing). (Text, not dictionaries: the reader's dictionaries are per
    parser block, and unifying them costs more than encoding each column once.)"""
    return pacsv.ConvertOptions(
        column_types={c: pa.string() for c in columns},
        include_columns=columns,
        strings_can_be_null=True,
        null_values=[""],
        quoted_strings_can_be_null=False,
    )


def first_bad(col: pa.Array, bad) -> str:
    return col.filter(bad)[0].as_py()


def integer_field(col: pa.Array):
    """An integer column (text, null = empty) as a dictionary array of its tokens
    (:func:`criteo_integer_tokens`), with the mask of rows whose cell is an integer and an
    example of one that is not (None, None when all are). A column holds a few thousand distinct
    cells, so validating and transforming each distinct cell once is cheap."""
    encoded = pc.dictionary_encode(col)
    cells = encoded.dictionary
    try:
        return (
            pa.DictionaryArray.from_arrays(encoded.indices, criteo_integer_tokens(cells)),
            None,
            None,
        )
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
    raise ValueError(
        f"header must be 'none' (the file has no header line) or 'present', got {value!r}"
    )


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


# Compressed inputs are recognised by their first bytes, whatever the file is called.
_CODECS = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\x28\xb5\x2f\xfd": "zstd"}
_ARCHIVES = {b"\xfd7zXZ\x00": "an xz file", b"PK\x03\x04": "a zip archive"}

# Text that is not valid UTF-8 is read a second time through this decoder, which turns each bad
# byte into U+FFFD; rows holding one are then skipped and counted (``bad_encoding``). Only files
# that need it pay for the decoding.
REPLACING = "fastme_utf8_replace"
_REPLACEMENT = "\ufffd"


class _ReplacingDecoder(codecs.BufferedIncrementalDecoder):
    def _buffer_decode(self, data, errors, final):
        return codecs.utf_8_decode(data, "replace", final)


def _find_codec(name):
    if name == REPLACING:
        return codecs.CodecInfo(
            codecs.utf_8_encode,
            lambda data, errors="replace": codecs.utf_8_decode(data, "replace", True),
            incrementaldecoder=_ReplacingDecoder,
            name=REPLACING,
        )
    return None


codecs.register(_find_codec)


class NotUTF8(ValueError):
    """The file holds bytes that are not UTF-8: read it again with the replacing decoder (a
    ValueError naming the file for a caller that cannot)."""


def check_file(path) -> Path:
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
            raise ValueError(
                f"{path} is {what}; unpack it first (fastme reads plain text, or "
                f"text compressed with gzip, bz2 or zstd)"
            )
    for magic, codec in _CODECS.items():
        if head.startswith(magic):
            if not pa.Codec.is_available(codec):
                raise ValueError(
                    f"{path} is {codec}-compressed, which this pyarrow build cannot "
                    f"read; decompress it first"
                )
            return codec
    return None


def damaged(path: Path, codec: str | None, exc: Exception) -> ValueError:
    what = f"{codec} stream" if codec else "file"
    return ValueError(
        f"{path} is damaged: its {what} cannot be read to the end ({exc}); no cache "
        f"was written. Download it again (for gzip, `gzip -t {path.name}` checks a "
        f"file)"
    )


def open_text(path: Path):
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


def first_line(path: Path) -> bytes:
    raw, source, codec = open_text(path)
    with raw:
        try:
            head = source.read(1 << 20)
        except (OSError, EOFError, pa.ArrowInvalid) as exc:
            raise damaged(path, codec, exc) from exc
    # pyarrow skips a UTF-8 byte-order mark (as written by some Windows tools); so does this
    return head.removeprefix(codecs.BOM_UTF8).split(b"\n", 1)[0]


def _drop_undecodable(batch: pa.RecordBatch, bad: Malformed) -> pa.RecordBatch:
    """Skip (and count) the rows where the replacing decoder had to stand in for a bad byte."""
    hit = None
    for col in batch.columns:
        found = pc.fill_null(pc.match_substring(col, _REPLACEMENT), False)  # null: an empty cell
        hit = found if hit is None else pc.or_(hit, found)
    n = count_true(hit) if hit is not None else 0
    if not n:
        return batch
    bad.bad_encoding += n
    first = batch.filter(hit).to_pylist()[0]
    bad.note(
        f"a row holds bytes that are not UTF-8: "
        f"{next(v for v in first.values() if v and _REPLACEMENT in v)!r}"
    )
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


def read_blocks(
    fmt,
    path: Path,
    block_size: int,
    bad: Malformed,
    desc: str,
    progress: bool,
    encoding: str = "utf8",
):
    """Record batches of the raw file (about ``block_size`` bytes of text each), with a
    byte-based progress bar.

    A background thread cuts the text into pieces at line ends and parses each with pyarrow's
    multi-threaded CSV reader while the caller works on the batch before, so the caller's work
    and the parsing overlap and every core parses. At most three pieces are in memory.

    Raises :class:`NotUTF8` when the file needs the replacing decoder, ValueError naming the file
    when it cannot be parsed or read to the end.
    """
    from tqdm.auto import tqdm

    undecodable = []
    lock = threading.Lock()  # the parser's threads call ``skip``

    def skip(row) -> str:
        with lock:
            bad.column_count += 1
            where = f"line {row.number}" if row.number and row.number > 0 else "a line"
            bad.note(
                f"{where} has {row.actual_columns} columns, expected "
                f"{row.expected_columns}: {row.text[:80]!r}"
            )
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
            return NotUTF8(f"{path} holds bytes that are not UTF-8")
        return ValueError(f"cannot parse {path} as {fmt.kind} data: {exc}")

    fmt.check_header(path, first_line(path))
    # Neither format quotes its cells: a stray '"' is an ordinary character of its cell, not the
    # start of a quoted field that would swallow the following lines.
    parse = pacsv.ParseOptions(delimiter=fmt.delimiter, quote_char=False, invalid_row_handler=skip)
    convert = fmt.convert_options()
    raw, source, codec = open_text(path)
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
            options = pacsv.ReadOptions(
                column_names=fmt.columns,
                skip_rows=int(first and fmt.header),
                block_size=min(_PARSE_BLOCK, block_size),
                encoding=encoding,
            )
            first = False
            try:
                table = pacsv.read_csv(
                    pa.BufferReader(pa.py_buffer(piece)),
                    read_options=options,
                    parse_options=parse,
                    convert_options=convert,
                )
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
        with (
            raw,
            tqdm(
                total=path.stat().st_size,
                unit="B",
                unit_scale=True,
                desc=desc,
                disable=not progress,
                mininterval=1.0,
            ) as bar,
        ):
            worker.start()
            done = 0
            while True:
                what, item = results.get()
                if what == "done":
                    break
                if what == "damaged":
                    raise damaged(path, codec, item) from item
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


def line_blocks(path: Path, block_bytes: int):
    """Yield (lines as a list of bytes, bytes of the file on disk consumed so far) in input order.
    Every line is returned, empty ones included, so that row numbers are line numbers. Input
    compressed with gzip, bz2 or zstd is recognised as in training."""
    raw, source, codec = open_text(path)
    with raw:
        tail, start = b"", True
        while True:
            try:
                chunk = source.read(block_bytes)
            except (OSError, EOFError, pa.ArrowInvalid) as exc:  # truncated or corrupt stream
                raise damaged(path, codec, exc) from exc
            if not chunk:
                if tail:
                    yield [tail.rstrip(b"\r")], raw.tell()
                return
            if start:  # a byte-order mark is not part of the first row
                chunk, start = chunk.removeprefix(codecs.BOM_UTF8), False
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            yield [line[:-1] if line.endswith(b"\r") else line for line in lines], raw.tell()


def as_strings(lines: list[bytes], bad_encoding: np.ndarray) -> pa.Array:
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
