"""Building a cache from raw files: one text file (:func:`preprocess`) or several files of one
text format read as one dataset (:func:`load_raw_files`, e.g. Criteo 1TB's day files, optionally
split by file), through the cache and the pass every source of record batches shares
(:func:`open_cache`, :func:`build_cache`; Parquet files use them too); with the helpers for a
PATH that names several files.

Each pass validates the rows and hands each block to :class:`fastme.data.encode.Encoder`, whose
docstring gives the index layout (kept values by count, OOV, missing); docs/data.md explains
every choice.
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
from fastme.data.text import (
    REPLACING,
    Malformed,
    MalformedRowsWarning,
    NotUTF8,
    check_file,
    read_blocks,
    rows_estimate,
)


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
    split = {
        name: check_count(name, value, 0)
        for name, value in (("valid_files", valid_files), ("test_files", test_files))
    }
    if test_files and len(files) <= valid_files + test_files:
        raise ValueError(
            f"a split by file needs more than valid_files + test_files = "
            f"{valid_files + test_files} files, got {len(files)}"
        )
    if valid_files and not test_files:
        raise ValueError("valid_files needs test_files too")
    return split


def say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# ---- raw text files -----------------------------------------------------------------------------


def preprocess(
    fmt,
    path,
    cache_dir=None,
    *,
    min_count: int | None = None,
    rebuild: bool = False,
    progress: bool = True,
    block_size: int = 32 << 20,
    **format_options,
) -> CTRData:
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
        format_options: the format's own (``fmt.OPTIONS``, in its docstring).
    """
    min_count = check_count("min_count", fmt.MIN_COUNT if min_count is None else min_count)
    source = RawFiles(fmt, [check_file(path)], format_options, block_size, progress, one_file=True)
    return source.load({"min_count": min_count}, cache_dir, rebuild)


def load_raw_files(
    fmt,
    spec: str,
    cache_dir=None,
    *,
    min_count: int | None = None,
    valid_files: int = 0,
    test_files: int = 0,
    rebuild: bool = False,
    progress: bool = True,
    block_size: int = 32 << 20,
    **format_options,
) -> CTRData:
    """Several raw files of the text format ``fmt`` (a glob, a directory or a comma list)
    preprocessed as one dataset, in file order, optionally split by file (``valid_files``,
    ``test_files``); ``format_options`` are the format's own (e.g. Avazu's ``hour``, CSV's
    ``label``)."""
    min_count = check_count("min_count", fmt.MIN_COUNT if min_count is None else min_count)
    files = expand_paths(spec, suffix="")
    split = check_file_split(files, valid_files, test_files)
    source = RawFiles(fmt, files, format_options, block_size, progress)
    return source.load({"min_count": min_count, **split}, cache_dir, rebuild)


class RawFiles:
    """Raw text files of one format read as one dataset, each with fastme.data.text's reader
    and the format's row parser; malformed rows are skipped and counted. ``one_file``: the
    cache of one file (:func:`preprocess`), which names and describes it as such."""

    def __init__(
        self,
        fmt,
        files,
        format_options: dict | None = None,
        block_size: int = 32 << 20,
        progress: bool = True,
        one_file: bool = False,
    ):
        self.kind = fmt.kind
        self.files = [Path(f) for f in files]
        self.fmt = fmt.configure(self.files[0], format_options)
        self.field_names = self.fmt.field_names
        self.block_size, self.progress, self.one_file = block_size, progress, one_file
        # One file is read as UTF-8 first (:meth:`read_replacing` if it must be read again).
        # Several get the replacing decoder from the start: a file found to hold bytes that are
        # not UTF-8 half-way could not be re-read from its start (the rows before are counted).
        self.encoding = "utf8" if one_file else REPLACING
        self.bad = Malformed()

    def read_replacing(self) -> None:
        self.encoding, self.bad = REPLACING, Malformed()

    def extra_info(self) -> dict:
        return {"malformed": self.bad.as_dict()}

    def estimated_rows(self) -> int | None:
        estimates = [rows_estimate(f) for f in self.files]
        return None if None in estimates else sum(estimates)

    def batches(self, file: Path):
        for batch in read_blocks(
            self.fmt,
            file,
            self.block_size,
            self.bad,
            f"{self.kind} {file.name}",
            self.progress,
            self.encoding,
        ):
            _, labels, values = self.fmt.parse(batch, self.bad)
            yield labels, values

    def load(self, options: dict, cache_dir, rebuild: bool) -> CTRData:
        """The cache of these files preprocessed with ``options`` and the format's; a warning
        counts the malformed rows skipped."""
        data = open_cache(
            self, {**options, **self.fmt.options()}, cache_dir, rebuild, self.progress
        )
        bad = self.bad
        if bad.total:  # counted only when this call built the cache
            where = self.files[0] if self.one_file else f"{len(self.files)} files"
            warnings.warn(
                f"{self.kind}: skipped {bad.total:,} malformed rows of {where} "
                f"({bad.summary()}); e.g. " + "; ".join(bad.examples[:3]),
                MalformedRowsWarning,
                stacklevel=3,
            )
        return data


# ---- the cache of a source ----------------------------------------------------------------------


def open_cache(source, options: dict, cache_dir, rebuild: bool, progress: bool) -> CTRData:
    """The cache of ``source`` (:class:`RawFiles` or the like) preprocessed with ``options``,
    keyed by the kind, the options and the files' content; built by :func:`build_cache` unless
    it exists (or ``rebuild``)."""
    kind, files = source.kind, source.files
    fingerprint = files_fingerprint(files)
    # (the name only makes the directory recognisable; those of caches built before stay)
    name = files[0].name if source.one_file else f"{files[0].stem}-{len(files)}files"
    directory = cache_path(cache_dir, f"{kind}-{name}", fingerprint, {"kind": kind, **options})
    return build_or_reuse(
        directory,
        fingerprint,
        lambda tmp: build_cache(source, tmp, directory, options, progress, fingerprint),
        name=kind,
        files=files,
        rebuild=rebuild,
    )


def build_cache(
    source, tmp: Path, directory: Path, options: dict, progress: bool, fingerprint: str
) -> None:
    """One streaming pass over ``source.files`` (``source.batches(file)`` yields (labels,
    per-field values)) through the :class:`Encoder` into the empty directory ``tmp`` (published
    as ``directory``)."""
    kind, files = source.kind, source.files
    started = time.perf_counter()
    try:
        encoder, file_rows = _encode(source, tmp)
    except NotUTF8:  # (only a file read as UTF-8 first raises it)
        say(
            progress,
            f"{kind}: {files[0]} holds bytes that are not UTF-8; reading it again, "
            f"skipping the rows that hold them",
        )
        source.read_replacing()
        encoder, file_rows = _encode(source, tmp)
    num_rows = encoder.num_rows
    if num_rows == 0 and source.one_file:
        bad = source.bad
        raise ValueError(
            f"{files[0]} holds no valid {kind} rows ({bad.total:,} malformed; "
            f"e.g. {'; '.join(bad.examples[:2]) or 'no data lines'})"
        )
    if num_rows == 0:
        raise ValueError(f"{files[0]}: the {kind} files hold no valid rows")
    read_s = time.perf_counter() - started
    vocab, field_dims, stats = encoder.finish(options["min_count"])
    seconds = time.perf_counter() - started
    if source.one_file:
        described = {
            "path": str(files[0].resolve()),
            "size": files[0].stat().st_size,
            "fingerprint": fingerprint,
            "utf8": source.encoding == "utf8",
        }
    else:
        described = {
            "files": [str(f.resolve()) for f in files],
            "rows": file_rows,
            "fingerprint": fingerprint,
        }
    info = {
        "dataset": kind,
        "source": described,
        "options": options,
        "positive_rate": encoder.positives / num_rows,
        **source.extra_info(),
        "fields": stats,
        "build": {
            "seconds": seconds,
            "read_pass_seconds": read_s,
            "rows_per_s": num_rows / seconds,
        },
    }
    if options.get("test_files"):
        k, j = options["test_files"], options["valid_files"]
        bounds = np.cumsum([0] + file_rows).tolist()
        n = len(file_rows)
        info["file_split"] = {
            "train": [0, bounds[n - k - j]],
            "valid": [bounds[n - k - j], bounds[n - k]] if j else None,
            "test": [bounds[n - k], bounds[n]],
        }
    write_meta(
        tmp, source.field_names, field_dims, num_rows, info, vocab=[v.to_pylist() for v in vocab]
    )
    origin = "" if source.one_file else f" from {len(files)} file(s)"
    say(
        progress,
        f"{kind}: {num_rows:,} rows{origin}, {sum(field_dims):,} feature values in "
        f"{len(field_dims)} fields; {seconds:.1f} s ({num_rows / seconds:,.0f} rows/s); "
        f"cache {directory}",
    )


def _encode(source, tmp: Path) -> tuple[Encoder, list[int]]:
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
