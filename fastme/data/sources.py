"""Bring your own data: Parquet files, several raw files and ``.npy`` arrays as
:class:`~fastme.data.CTRData`.

``parquet:PATH`` — PATH is a file, a directory (its ``*.parquet``), a glob (``day_*.parquet``) or
a comma-separated list; several files are read in sorted order (as given, for a list). Column
contract:

- ``label`` (option ``label=NAME``): 0/1 (bool, integer or float); every row needs one;
- every other column (or only those of option ``fields=[...]``) is a categorical field, whatever
  its type (strings, integers); a null cell is the field's *missing* value;
- columns listed in option ``integer=[...]`` are counts bucketized as Criteo's I1..I13
  (``floor(ln(v)^2)`` for v > 2, ``v - 2`` otherwise) before counting.

Preprocessing is the raw files' (fastme.data.encode): one streaming pass over the files in record
batches (bounded memory: one batch plus the value counts), values seen at least ``min_count``
times (default 1) numbered by decreasing count, then one OOV and one missing index per field,
written into a memory-mapped cache with its ``vocab.json`` (so ``fastme predict`` encodes new
files the same way). Options ``valid_files=J, test_files=K`` split by file instead of at random:
the last K files are the test set, the J before them the validation set (J = 0: a seeded random
1/9 of the training files' rows), the rest the training set — e.g. Criteo 1TB's 24 days with
``test_files=1``. The split is recorded in the cache (``file_split``) and
:meth:`CTRData.split` returns it.

``criteo:PATH`` / ``avazu:PATH`` / ``csv:PATH`` with a glob, a directory or a comma list —
several raw files (e.g. Criteo 1TB's ``day_0`` .. ``day_23``) preprocessed as one dataset by the
raw reader and parser (fastme.data.raw, whose formats take their own options), with the same
``valid_files`` / ``test_files`` split by file.

``npy:DIR`` — ``DIR/x.npy`` holds already encoded indices (integer [n, N], field i's index in
``[0, field_dims[i])``), ``DIR/y.npy`` the 0/1 labels [n]; ``DIR/meta.json`` may give
``field_dims`` and ``field_names`` (default: max + 1 of each column, ``f0..``). int32/float32
arrays are used memory-mapped as they are; other dtypes are converted into a cache in chunks.
"""

from __future__ import annotations

import glob
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastme.data.cache import (NpyWriter, build_or_reuse, cache_path, check_space,
                                files_fingerprint)
from fastme.data.dataset import CTRData, write_meta
from fastme.data.encode import Encoder
from fastme.data.raw import (_REPLACING, DEFAULT_MIN_COUNT, FORMATS, MalformedRowsWarning,
                             _Malformed, _read_blocks, integer_field, make_format, rows_estimate)

PARQUET_OPTIONS = {"label", "fields", "integer", "min_count", "valid_files", "test_files",
                   "rebuild", "progress", "batch_rows"}
_BATCH_ROWS = 1 << 17


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


class ParquetSource:
    """Record batches of Parquet files mapped to (labels, per-field value arrays)."""

    def __init__(self, files, label: str = "label", fields=None, integer=(),
                 batch_rows: int = _BATCH_ROWS):
        import pyarrow.parquet as pq

        self.files = [Path(f) for f in files]
        self.label = label
        self.batch_rows = int(batch_rows)
        schema = None
        for f in self.files:
            try:
                file_schema = pq.read_schema(f)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ValueError(f"cannot read {f} as Parquet: {exc}") from exc
            names = list(file_schema.names)
            if schema is None:
                schema = names
            elif set(names) != set(schema):
                raise ValueError(f"{f} has columns {names}, but {self.files[0]} has {schema}: "
                                 f"every file needs the same columns")
        self.has_label = label in schema
        self.field_names = list(fields) if fields is not None else [c for c in schema
                                                                    if c != label]
        self.integer = set(integer)
        missing = [c for c in self.field_names + sorted(self.integer) if c not in schema]
        if missing:
            raise ValueError(f"{self.files[0]} has no column {', '.join(missing)} "
                             f"(columns: {', '.join(schema)})")
        if not self.field_names:
            raise ValueError(f"{self.files[0]} has no feature column besides {label!r}")
        if self.integer - set(self.field_names):
            raise ValueError(f"integer columns {sorted(self.integer - set(self.field_names))} "
                             f"are not fields")

    def estimated_rows(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    kind = "parquet"

    def extra_info(self) -> dict:
        return {}

    def batches(self, file: Path, need_label: bool = True):
        """Yield (labels float32 or None, [one array per field, null = missing])."""
        import pyarrow.parquet as pq

        columns = self.field_names + ([self.label] if self.has_label else [])
        for batch in pq.ParquetFile(file).iter_batches(batch_size=self.batch_rows,
                                                       columns=columns):
            labels = None
            if self.has_label:
                labels = self._labels(batch.column(self.label), file)
            elif need_label:
                raise ValueError(f"{file} has no label column {self.label!r} (option label=NAME)")
            yield labels, [self._field(batch.column(name), name, file)
                           for name in self.field_names]

    @staticmethod
    def _labels(col: pa.Array, file: Path) -> np.ndarray:
        if col.null_count:
            raise ValueError(f"{file}: the label column has {col.null_count} empty cells")
        y = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError(f"{file}: labels must be 0 or 1, found {y[~np.isin(y, (0, 1))][0]}")
        return y.astype(np.float32)

    def _field(self, col: pa.Array, name: str, file: Path) -> pa.Array:
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if name in self.integer:
            if not pa.types.is_integer(col.type):
                raise ValueError(f"{file}: integer column {name} has type {col.type}")
            return integer_field(pc.cast(col, pa.string()))[0]  # integers: never a bad cell
        if pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            return pc.cast(col, pa.string())  # one categorical value per distinct number
        return col


def _cache_dir(kind: str, files: list[Path], options: dict, cache_dir,
               fingerprint: str) -> Path:
    return cache_path(cache_dir, f"{kind}-{files[0].stem}-{len(files)}files", fingerprint,
                      {"kind": kind, **options})


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def load_parquet(spec: str, cache_dir=None, *, label: str = "label", fields=None, integer=(),
                 min_count: int = 1, valid_files: int = 0, test_files: int = 0,
                 rebuild: bool = False, progress: bool = True,
                 batch_rows: int = _BATCH_ROWS) -> CTRData:
    """Preprocess Parquet files once into a cache and open it; see the module docstring."""
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    files = expand_paths(spec)
    _check_file_split(files, valid_files, test_files)
    source = ParquetSource(files, label, fields, integer, batch_rows)
    options = {"label": label, "fields": source.field_names, "integer": sorted(source.integer),
               "min_count": int(min_count), "valid_files": int(valid_files),
               "test_files": int(test_files)}
    fingerprint = files_fingerprint(files)
    directory = _cache_dir("parquet", files, options, cache_dir, fingerprint)
    return build_or_reuse(directory, fingerprint,
                          lambda tmp: _build(source, tmp, directory, options, progress,
                                             fingerprint),
                          name="parquet", files=files, rebuild=rebuild)


def _check_file_split(files, valid_files, test_files) -> None:
    for name, value in (("valid_files", valid_files), ("test_files", test_files)):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if test_files and len(files) <= valid_files + test_files:
        raise ValueError(f"a split by file needs more than valid_files + test_files = "
                         f"{valid_files + test_files} files, got {len(files)}")
    if valid_files and not test_files:
        raise ValueError("valid_files needs test_files too")


class RawFiles:
    """Several raw text files of one format (e.g. Criteo 1TB's day files) read as one dataset,
    each with fastme.data.raw's reader and row parser; malformed rows are skipped and counted."""

    def __init__(self, kind: str, files, format_options: dict | None = None,
                 block_size: int = 32 << 20, progress: bool = True):
        self.kind = kind
        self.files = [Path(f) for f in files]
        self.fmt = make_format(kind, self.files[0], format_options)
        self.field_names = self.fmt.field_names
        self.block_size, self.progress = block_size, progress
        self.bad = _Malformed()

    def extra_info(self) -> dict:
        return {"malformed": self.bad.as_dict()}

    def estimated_rows(self) -> int | None:
        estimates = [rows_estimate(f) for f in self.files]
        return None if None in estimates else sum(estimates)

    def batches(self, file: Path):
        # The replacing decoder from the start: a file found to hold bytes that are not UTF-8
        # half-way could not be re-read from its start here (the rows before are counted).
        for batch in _read_blocks(self.fmt, file, self.block_size, self.bad,
                                  f"{self.kind} {file.name}", self.progress, encoding=_REPLACING):
            yield self.fmt.rows(batch, self.bad)


def is_multi_file(path: str) -> bool:
    """Whether a PATH names several files: a glob, a comma-separated list or a directory."""
    return "," in path or any(c in path for c in "*?[") or Path(path).expanduser().is_dir()


def load_raw_files(kind: str, spec: str, cache_dir=None, *, min_count: int | None = None,
                   valid_files: int = 0, test_files: int = 0, rebuild: bool = False,
                   progress: bool = True, block_size: int = 32 << 20,
                   **format_options) -> CTRData:
    """Several raw ``kind`` files (a glob, a directory or a comma list) preprocessed as one
    dataset, in file order, optionally split by file (``valid_files``, ``test_files``);
    ``format_options`` are the format's own (e.g. Avazu's ``hour``, CSV's ``label``)."""
    if kind not in FORMATS:
        raise ValueError(f"unknown raw format {kind!r}; expected one of {', '.join(FORMATS)}")
    min_count = DEFAULT_MIN_COUNT[kind] if min_count is None else min_count
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    files = expand_paths(spec, suffix="")
    _check_file_split(files, valid_files, test_files)
    source = RawFiles(kind, files, format_options, block_size, progress)
    options = {"min_count": int(min_count), "valid_files": int(valid_files),
               "test_files": int(test_files), **source.fmt.options()}
    fingerprint = files_fingerprint(files)
    directory = _cache_dir(kind, files, options, cache_dir, fingerprint)
    data = build_or_reuse(directory, fingerprint,
                          lambda tmp: _build(source, tmp, directory, options, progress,
                                             fingerprint),
                          name=kind, files=files, rebuild=rebuild)
    if source.bad.total:  # counted only when this call built the cache
        warnings.warn(f"{kind}: skipped {source.bad.total:,} malformed rows of "
                      f"{len(files)} files ({source.bad.summary()}); e.g. "
                      + "; ".join(source.bad.examples[:3]), MalformedRowsWarning, stacklevel=2)
    return data


def _build(source, tmp: Path, directory: Path, options: dict, progress: bool,
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
    _say(progress, f"{source.kind}: {num_rows:,} rows from {len(source.files)} file(s), "
                   f"{sum(field_dims):,} feature values in {n_fields} fields; {seconds:.1f} s "
                   f"({num_rows / seconds:,.0f} rows/s); cache {directory}")


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path} is truncated or not a .npy array ({exc}); write it again "
                         f"with numpy.save") from exc


def load_npy(directory, cache_dir=None, *, progress: bool = True,
             chunk_rows: int = 1 << 20) -> CTRData:
    """Already encoded arrays ``DIR/x.npy`` and ``DIR/y.npy`` (see the module docstring)."""
    directory = Path(directory).expanduser()
    for name in ("x.npy", "y.npy"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"npy:DIR needs {directory / name} (see docs/data.md)")
    x, y = (_open_npy(directory / name) for name in ("x.npy", "y.npy"))
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{directory / 'x.npy'} must be an integer array [n, N], got "
                         f"{x.dtype} {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"{directory / 'y.npy'} must have shape ({len(x)},), got {y.shape}")
    meta = {}
    if (directory / "meta.json").is_file():
        meta = json.loads((directory / "meta.json").read_text())
    dims = meta.get("field_dims")
    if dims is None:  # one streaming pass for the maxima
        dims = np.zeros(x.shape[1], dtype=np.int64)
        for start in range(0, len(x), chunk_rows):
            dims = np.maximum(dims, np.asarray(x[start:start + chunk_rows]).max(axis=0) + 1)
        dims = dims.tolist()
    names = meta.get("field_names")
    info = {"dataset": "npy", "source": {"dir": str(directory.resolve())}}
    if x.dtype == np.int32 and y.dtype == np.float32:
        data = CTRData(x, y, dims, names, name="npy", info=info)
    else:  # convert once, in chunks, into a cache
        arrays = [directory / "x.npy", directory / "y.npy"]
        fingerprint = files_fingerprint(arrays)
        target = cache_path(cache_dir, f"npy-{directory.name}", fingerprint,
                            {"kind": "npy", "meta": meta})
        names = names or [f"f{i}" for i in range(len(dims))]

        def convert(tmp: Path) -> None:
            check_space(tmp, len(x) * (4 * x.shape[1] + 4))
            xo = NpyWriter(tmp / "x.npy", np.int32, (x.shape[1],))
            yo = NpyWriter(tmp / "y.npy", np.float32, ())
            for start in range(0, len(x), chunk_rows):
                xo.append(x[start:start + chunk_rows])
                yo.append(y[start:start + chunk_rows])
            xo.close()
            yo.close()
            write_meta(tmp, names, dims, len(x),
                       {**info, "source": {**info["source"], "fingerprint": fingerprint}})
            _say(progress, f"npy: converted {directory} to int32/float32 in {target}")

        try:  # load_cache validates the indices against field_dims
            data = build_or_reuse(target, fingerprint, convert, name="npy", files=arrays)
        except ValueError as exc:
            raise ValueError(f"{directory}: {exc} (meta.json field_dims too small?)") from exc
    for start in range(0, len(data), chunk_rows):
        labels = np.asarray(data.y[start:start + chunk_rows])
        if not np.isin(labels, (0.0, 1.0)).all():
            raise ValueError(f"{directory / 'y.npy'}: labels must be 0 or 1")
    try:
        data.check_indices(chunk_rows)
    except ValueError as exc:
        raise ValueError(f"{directory}: {exc} (meta.json field_dims too small?)") from exc
    return data
