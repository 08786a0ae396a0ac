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

from fastme.data.cache import build_or_reuse, cache_path, file_fingerprint, files_fingerprint
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


def check_min_count(min_count) -> int:
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    return int(min_count)


def check_file_split(files, valid_files, test_files) -> None:
    for name, value in (("valid_files", valid_files), ("test_files", test_files)):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if test_files and len(files) <= valid_files + test_files:
        raise ValueError(f"a split by file needs more than valid_files + test_files = "
                         f"{valid_files + test_files} files, got {len(files)}")
    if valid_files and not test_files:
        raise ValueError("valid_files needs test_files too")


def say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# ---- one text file ------------------------------------------------------------------------------

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
    kind = fmt.kind
    min_count = check_min_count(fmt.MIN_COUNT if min_count is None else min_count)
    path = check_file(path)
    fmt = fmt.configure(path, format_options)
    options = {"min_count": min_count, **fmt.options()}
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


def _build(fmt, path: Path, tmp: Path, directory: Path, options: dict,
           progress: bool, block_size: int, fingerprint: str) -> Malformed:
    """The one pass over the file into the empty directory ``tmp`` (published as ``directory``);
    returns the malformed rows skipped."""
    started = time.perf_counter()
    encoding = "utf8"
    try:
        bad, encoder = _encode(fmt, path, tmp, progress, block_size, encoding)
    except NotUTF8:
        encoding = REPLACING
        say(progress, f"{fmt.kind}: {path} holds bytes that are not UTF-8; reading it again, "
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
    say(progress, f"{fmt.kind}: {num_rows:,} rows, {sum(field_dims):,} feature values in "
                   f"{len(field_dims)} fields; {seconds:.1f} s ({num_rows / seconds:,.0f} rows/s); "
                   f"cache {directory}")
    return bad


def _encode(fmt, path: Path, tmp: Path, progress: bool, block_size: int,
            encoding: str) -> tuple[Malformed, Encoder]:
    """Read the file once, validating its rows, into an :class:`Encoder` writing to ``tmp``."""
    bad = Malformed()
    with Encoder(tmp, fmt.field_names, estimated_rows=rows_estimate(path)) as encoder:
        for batch in read_blocks(fmt, path, block_size, bad, f"{fmt.kind}: reading", progress,
                                  encoding):
            encoder.add(*fmt.rows(batch, bad))
    return bad, encoder


# ---- several files ------------------------------------------------------------------------------

class RawFiles:
    """Several raw text files of one format (e.g. Criteo 1TB's day files) read as one dataset,
    each with fastme.data.text's reader and the format's row parser; malformed rows are skipped
    and counted."""

    def __init__(self, fmt, files, format_options: dict | None = None,
                 block_size: int = 32 << 20, progress: bool = True):
        self.kind = fmt.kind
        self.files = [Path(f) for f in files]
        self.fmt = fmt.configure(self.files[0], format_options)
        self.field_names = self.fmt.field_names
        self.block_size, self.progress = block_size, progress
        self.bad = Malformed()

    def extra_info(self) -> dict:
        return {"malformed": self.bad.as_dict()}

    def estimated_rows(self) -> int | None:
        estimates = [rows_estimate(f) for f in self.files]
        return None if None in estimates else sum(estimates)

    def batches(self, file: Path):
        # The replacing decoder from the start: a file found to hold bytes that are not UTF-8
        # half-way could not be re-read from its start here (the rows before are counted).
        for batch in read_blocks(self.fmt, file, self.block_size, self.bad,
                                 f"{self.kind} {file.name}", self.progress, encoding=REPLACING):
            yield self.fmt.rows(batch, self.bad)


def load_raw_files(fmt, spec: str, cache_dir=None, *, min_count: int | None = None,
                   valid_files: int = 0, test_files: int = 0, rebuild: bool = False,
                   progress: bool = True, block_size: int = 32 << 20,
                   **format_options) -> CTRData:
    """Several raw files of the text format ``fmt`` (a glob, a directory or a comma list)
    preprocessed as one dataset, in file order, optionally split by file (``valid_files``,
    ``test_files``); ``format_options`` are the format's own (e.g. Avazu's ``hour``, CSV's
    ``label``)."""
    kind = fmt.kind
    min_count = check_min_count(fmt.MIN_COUNT if min_count is None else min_count)
    files = expand_paths(spec, suffix="")
    check_file_split(files, valid_files, test_files)
    source = RawFiles(fmt, files, format_options, block_size, progress)
    options = {"min_count": min_count, "valid_files": int(valid_files),
               "test_files": int(test_files), **source.fmt.options()}
    fingerprint = files_fingerprint(files)
    directory = files_cache_path(kind, files, options, cache_dir, fingerprint)
    data = build_or_reuse(directory, fingerprint,
                          lambda tmp: build_cache(source, tmp, directory, options, progress,
                                                  fingerprint),
                          name=kind, files=files, rebuild=rebuild)
    if source.bad.total:  # counted only when this call built the cache
        warnings.warn(f"{kind}: skipped {source.bad.total:,} malformed rows of "
                      f"{len(files)} files ({source.bad.summary()}); e.g. "
                      + "; ".join(source.bad.examples[:3]), MalformedRowsWarning, stacklevel=2)
    return data


def files_cache_path(kind: str, files: list[Path], options: dict, cache_dir,
                     fingerprint: str) -> Path:
    return cache_path(cache_dir, f"{kind}-{files[0].stem}-{len(files)}files", fingerprint,
                      {"kind": kind, **options})


def build_cache(source, tmp: Path, directory: Path, options: dict, progress: bool,
                fingerprint: str) -> None:
    """One streaming pass over ``source.files`` (``source.batches(file)`` yields (labels,
    per-field values)) through the raw files' :class:`Encoder` into the empty directory ``tmp``
    (published as ``directory``)."""
    started = time.perf_counter()
    file_rows = []
    with Encoder(tmp, source.field_names, estimated_rows=source.estimated_rows()) as encoder:
        for file in source.files:
            before = encoder.num_rows
            for labels, values in source.batches(file):
                encoder.add(labels, values)
            file_rows.append(encoder.num_rows - before)
    num_rows, positives = encoder.num_rows, encoder.positives
    if num_rows == 0:
        raise ValueError(f"{source.files[0]}: the {source.kind} files hold no valid rows")
    vocab, field_dims, stats = encoder.finish(options["min_count"])
    n_fields = len(field_dims)
    seconds = time.perf_counter() - started
    bounds = np.cumsum([0] + file_rows).tolist()
    info = {"dataset": source.kind,
            "source": {"files": [str(f.resolve()) for f in source.files], "rows": file_rows,
                       "fingerprint": fingerprint},
            "options": options, "positive_rate": positives / num_rows, "fields": stats,
            "build": {"seconds": seconds, "rows_per_s": num_rows / seconds},
            **source.extra_info()}
    if options["test_files"]:
        k, j = options["test_files"], options["valid_files"]
        n = len(file_rows)
        info["file_split"] = {"train": [0, bounds[n - k - j]],
                              "valid": [bounds[n - k - j], bounds[n - k]] if j else None,
                              "test": [bounds[n - k], bounds[n]]}
    write_meta(tmp, source.field_names, field_dims, num_rows, info,
               vocab=[v.to_pylist() for v in vocab])
    say(progress, f"{source.kind}: {num_rows:,} rows from {len(source.files)} file(s), "
                   f"{sum(field_dims):,} feature values in {n_fields} fields; {seconds:.1f} s "
                   f"({num_rows / seconds:,.0f} rows/s); cache {directory}")


