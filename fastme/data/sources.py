"""Building a cache from raw files: one text file (:func:`preprocess`), several files of one
text format read as one dataset (:func:`load_raw_files`, e.g. Criteo 1TB's day files, optionally
split by file), and the pass shared by every source of record batches (:func:`build_cache`,
which Parquet files use too); with the helpers for a PATH that names several files.

Each pass validates the rows and hands each block to :class:`fastme.data.encode.Encoder`; that
writes int32 ``x`` and float32 ``y`` into ``.npy`` files and then maps the codes to the final
indices over the binary file. The index layout (kept values by count, OOV, missing) is described
there; docs/data.md explains every choice.
"""

from __future__ import annotations

import glob
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from fastme.data.cache import build_or_reuse, cache_path, files_fingerprint
from fastme.data.dataset import CTRData, write_meta
from fastme.data.encode import Encoder
from fastme.data.text import (REPLACING, Malformed, MalformedRowsWarning, NotUTF8, check_file,
                              read_blocks, rows_estimate)


def expand_paths(spec: str, suffix: str = ".parquet") -> list[Path]:
    """The files of a PATH spec: a file, a directory, a glob or a comma-separated list."""
    parts = [p for p in spec.split(",") if p] if "," in spec else [spec]
    files: list[Path] = []
    for part in parts:
        path = Path(part).expanduser()
        if any(c in part for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(str(path)))
            if not found:
                raise FileNotFoundError(f"no file matches {part!r}")
            files += found
        elif path.is_dir():
            found = sorted(p for p in path.glob(f"*{suffix}") if p.is_file())
            if not found:
                raise FileNotFoundError(f"directory {path} holds no *{suffix} file")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"data file not found: {path}")
    return files


def is_multi_file(path: str) -> bool:
    """Whether a PATH names several files: a glob, a comma-separated list or a directory."""
    return "," in path or any(c in path for c in "*?[") or Path(path).expanduser().is_dir()


def check_count(name: str, value, least: int = 1) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is an integer >= ``least``
    (1: positive, 0: non-negative)."""
    if isinstance(value, bool) or int(value) != value or value < least:
        what = "positive" if least else "non-negative"
        raise ValueError(f"{name} must be a {what} integer, got {value!r}")
    return int(value)


def check_file_split(files, valid_files, test_files) -> dict:
    """The options of a split by file (the last ``test_files`` files, the ``valid_files``
    before them), checked against the number of files."""
    split = {name: check_count(name, value, 0)
             for name, value in (("valid_files", valid_files), ("test_files", test_files))}
    if test_files and len(files) <= valid_files + test_files:
        raise ValueError(f"a split by file needs more than valid_files + test_files = "
                         f"{valid_files + test_files} files, got {len(files)}")
    if valid_files and not test_files:
        raise ValueError("valid_files needs test_files too")
    return split


def say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# ---- raw text files -----------------------------------------------------------------------------

def preprocess(fmt, path, cache_dir=None, *, min_count: int | None = None,
               rebuild: bool = False, progress: bool = True, block_size: int = 32 << 20,
               **format_options) -> CTRData:
    """Preprocess a raw file of the text format ``fmt`` (a class of
    :mod:`fastme.data.formats`) once and open its cache.

    The cache directory (under ``cache_dir``, default ``$FASTME_CACHE_DIR`` or
    ``~/.cache/fastme``) is keyed by the file's :func:`file_fingerprint` and by the options, and
    reused when it exists unless ``rebuild``. Building holds a lock (``<cache>.lock``): a second
    process asking for the same cache waits for the first and then reuses its result.

    Args:
        min_count: values seen fewer times map to the field's OOV index (default 10 for Criteo,
            2 for Avazu, 1 for CSV; the reference code uses 4 for Avazu).
        progress: progress bars and a summary on stderr.
        block_size: bytes of raw text parsed per block (bounds the working memory).
        format_options: the format's own (``fmt.OPTIONS``): Avazu's ``hour``
            ("split": hour-of-day + weekday, or "raw": the reference code) and ``header``
            ("none": no header line); CSV's ``label``, ``fields``, ``integer``, ``delimiter``.
    """
    min_count = check_count("min_count", fmt.MIN_COUNT if min_count is None else min_count)
    source = RawFile(fmt, [check_file(path)], format_options, block_size, progress)
    return source.load({"min_count": min_count}, cache_dir, rebuild)


def load_raw_files(fmt, spec: str, cache_dir=None, *, min_count: int | None = None,
                   valid_files: int = 0, test_files: int = 0, rebuild: bool = False,
                   progress: bool = True, block_size: int = 32 << 20,
                   **format_options) -> CTRData:
    """Several raw files of the text format ``fmt`` (a glob, a directory or a comma list)
    preprocessed as one dataset, in file order, optionally split by file (``valid_files``,
    ``test_files``); ``format_options`` are the format's own (e.g. Avazu's ``hour``, CSV's
    ``label``)."""
    min_count = check_count("min_count", fmt.MIN_COUNT if min_count is None else min_count)
    files = expand_paths(spec, suffix="")
    split = check_file_split(files, valid_files, test_files)
    source = RawFiles(fmt, files, format_options, block_size, progress)
    return source.load({"min_count": min_count, **split}, cache_dir, rebuild)


class Source:
    """Files that :func:`build_cache` reads as one dataset. Each source has its ``kind``,
    ``files``, ``field_names``, ``estimated_rows()`` and ``batches(file)`` (labels, per-field
    value arrays); these defaults name the cache and describe the files as several."""

    def cache_name(self) -> str:
        """Makes the cache's directory recognisable (the key is the content and options)."""
        return f"{self.files[0].stem}-{len(self.files)}files"

    def describe(self, file_rows: list[int], fingerprint: str) -> dict:
        """meta.json's ``source``."""
        return {"files": [str(f.resolve()) for f in self.files], "rows": file_rows,
                "fingerprint": fingerprint}

    def extra_info(self) -> dict:
        return {}

    def rows_from(self) -> str:
        """Where the rows came from, in the summary line."""
        return f" from {len(self.files)} file(s)"

    def no_rows(self) -> str:
        return f"{self.files[0]}: the {self.kind} files hold no valid rows"


class RawFiles(Source):
    """Raw text files of one format (e.g. Criteo 1TB's day files) read as one dataset, each with
    fastme.data.text's reader and the format's row parser; malformed rows are skipped and
    counted."""

    # The replacing decoder from the start: a file found to hold bytes that are not UTF-8
    # half-way could not be re-read from its start here (the rows before are counted).
    encoding = REPLACING

    def __init__(self, fmt, files, format_options: dict | None = None,
                 block_size: int = 32 << 20, progress: bool = True):
        self.kind = fmt.kind
        self.files = [Path(f) for f in files]
        self.fmt = fmt.configure(self.files[0], format_options)
        self.field_names = self.fmt.field_names
        self.block_size, self.progress = block_size, progress
        self.bad = Malformed()

    def where(self) -> str:
        return f"{len(self.files)} files"

    def extra_info(self) -> dict:
        return {"malformed": self.bad.as_dict()}

    def estimated_rows(self) -> int | None:
        estimates = [rows_estimate(f) for f in self.files]
        return None if None in estimates else sum(estimates)

    def batches(self, file: Path):
        for batch in read_blocks(self.fmt, file, self.block_size, self.bad,
                                 f"{self.kind} {file.name}", self.progress, self.encoding):
            yield self.fmt.rows(batch, self.bad)

    def load(self, options: dict, cache_dir, rebuild: bool) -> CTRData:
        """The cache of these files preprocessed with ``options`` and the format's; a warning
        counts the malformed rows skipped."""
        data = open_cache(self, {**options, **self.fmt.options()}, cache_dir, rebuild,
                          self.progress)
        bad = self.bad
        if bad.total:  # counted only when this call built the cache
            warnings.warn(f"{self.kind}: skipped {bad.total:,} malformed rows of {self.where()} "
                          f"({bad.summary()}); e.g. " + "; ".join(bad.examples[:3]),
                          MalformedRowsWarning, stacklevel=3)
        return data


class RawFile(RawFiles):
    """One raw text file: read as UTF-8, and once more with the replacing decoder only when it
    holds bytes that are not (:meth:`read_replacing`)."""

    encoding = "utf8"

    def read_replacing(self) -> None:
        self.encoding, self.bad = REPLACING, Malformed()

    def cache_name(self) -> str:
        return self.files[0].name

    def where(self) -> str:
        return str(self.files[0])

    def describe(self, file_rows, fingerprint):
        path = self.files[0]
        return {"path": str(path.resolve()), "size": path.stat().st_size,
                "fingerprint": fingerprint, "utf8": self.encoding == "utf8"}

    def rows_from(self) -> str:
        return ""

    def no_rows(self) -> str:
        return (f"{self.files[0]} holds no valid {self.kind} rows ({self.bad.total:,} malformed; "
                f"e.g. {'; '.join(self.bad.examples[:2]) or 'no data lines'})")


# ---- the cache of a source ----------------------------------------------------------------------

def open_cache(source: Source, options: dict, cache_dir, rebuild: bool,
               progress: bool) -> CTRData:
    """The cache of ``source`` preprocessed with ``options``, keyed by the kind, the options and
    the files' content; built by :func:`build_cache` unless it exists (or ``rebuild``)."""
    kind, files = source.kind, source.files
    fingerprint = files_fingerprint(files)
    directory = cache_path(cache_dir, f"{kind}-{source.cache_name()}", fingerprint,
                           {"kind": kind, **options})
    return build_or_reuse(directory, fingerprint,
                          lambda tmp: build_cache(source, tmp, directory, options, progress,
                                                  fingerprint),
                          name=kind, files=files, rebuild=rebuild)


def build_cache(source: Source, tmp: Path, directory: Path, options: dict, progress: bool,
                fingerprint: str) -> None:
    """One streaming pass over ``source.files`` through the :class:`Encoder` into the empty
    directory ``tmp`` (published as ``directory``)."""
    started = time.perf_counter()
    try:
        encoder, file_rows = _encode(source, tmp)
    except NotUTF8:  # (only a source read as UTF-8 first raises it: one raw file)
        say(progress, f"{source.kind}: {source.files[0]} holds bytes that are not UTF-8; reading "
                      f"it again, skipping the rows that hold them")
        source.read_replacing()
        encoder, file_rows = _encode(source, tmp)
    num_rows = encoder.num_rows
    if num_rows == 0:
        raise ValueError(source.no_rows())
    read_s = time.perf_counter() - started
    vocab, field_dims, stats = encoder.finish(options["min_count"])
    seconds = time.perf_counter() - started
    info = {"dataset": source.kind, "source": source.describe(file_rows, fingerprint),
            "options": options, "positive_rate": encoder.positives / num_rows,
            **source.extra_info(), "fields": stats,
            "build": {"seconds": seconds, "read_pass_seconds": read_s,
                      "rows_per_s": num_rows / seconds}}
    if options.get("test_files"):
        k, j = options["test_files"], options["valid_files"]
        bounds = np.cumsum([0] + file_rows).tolist()
        n = len(file_rows)
        info["file_split"] = {"train": [0, bounds[n - k - j]],
                              "valid": [bounds[n - k - j], bounds[n - k]] if j else None,
                              "test": [bounds[n - k], bounds[n]]}
    write_meta(tmp, source.field_names, field_dims, num_rows, info,
               vocab=[v.to_pylist() for v in vocab])
    say(progress, f"{source.kind}: {num_rows:,} rows{source.rows_from()}, "
                  f"{sum(field_dims):,} feature values in {len(field_dims)} fields; "
                  f"{seconds:.1f} s ({num_rows / seconds:,.0f} rows/s); cache {directory}")


def _encode(source: Source, tmp: Path) -> tuple[Encoder, list[int]]:
    """Every file read once into an :class:`Encoder` writing to ``tmp``; with each file's
    rows."""
    file_rows = []
    with Encoder(tmp, source.field_names, estimated_rows=source.estimated_rows()) as encoder:
        for file in source.files:
            before = encoder.num_rows
            for labels, values in source.batches(file):
                encoder.add(labels, values)
            file_rows.append(encoder.num_rows - before)
    return encoder, file_rows
