"""``parquet:PATH`` — Parquet files as :class:`~fastme.data.CTRData`. PATH is a file, a
directory (its ``*.parquet``), a glob (``day_*.parquet``) or a comma-separated list; several
files are read in sorted order (as given, for a list). Column contract:

- ``label`` (option ``label=NAME``): 0/1 (bool, integer or float); every row needs one;
- every other column (or only those of option ``fields=[...]``) is a categorical field, whatever
  its type (strings, integers); a null cell is the field's *missing* value;
- columns listed in option ``integer=[...]`` are counts bucketized as Criteo's I1..I13
  (``floor(ln(v)^2)`` for v > 2, ``v - 2`` otherwise) before counting.

Preprocessing is the raw files' (:class:`fastme.data.encode.Encoder`, ``min_count`` default 1),
and so is the split by file (options ``valid_files=J, test_files=K``: the last K files test, the
J before them validate; :meth:`CTRData.split` returns it); docs/data.md describes both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastme.data.dataset import CTRData
from fastme.data.encode import indices
from fastme.data.formats.base import DataFormat, RowBlock
from fastme.data.sources import check_count, check_file_split, expand_paths, open_cache
from fastme.data.text import integer_field

PARQUET_OPTIONS = {
    "label",
    "fields",
    "integer",
    "min_count",
    "valid_files",
    "test_files",
    "rebuild",
    "progress",
    "batch_rows",
}
_BATCH_ROWS = 1 << 17


class ParquetSource:
    """Record batches of Parquet files mapped to (labels, per-field value arrays)."""

    kind, one_file = "parquet", False

    def __init__(
        self, files, label: str = "label", fields=None, integer=(), batch_rows: int = _BATCH_ROWS
    ):
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
                raise ValueError(
                    f"{f} has columns {names}, but {self.files[0]} has {schema}: "
                    f"every file needs the same columns"
                )
        self.has_label = label in schema
        self.field_names = list(fields) if fields is not None else [c for c in schema if c != label]
        self.integer = set(integer)
        missing = [c for c in self.field_names + sorted(self.integer) if c not in schema]
        if missing:
            raise ValueError(
                f"{self.files[0]} has no column {', '.join(missing)} (columns: {', '.join(schema)})"
            )
        if not self.field_names:
            raise ValueError(f"{self.files[0]} has no feature column besides {label!r}")
        if self.integer - set(self.field_names):
            raise ValueError(
                f"integer columns {sorted(self.integer - set(self.field_names))} are not fields"
            )

    def estimated_rows(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    def extra_info(self) -> dict:
        return {}

    def batches(self, file: Path, need_label: bool = True):
        """Yield (labels float32 or None, [one array per field, null = missing])."""
        import pyarrow.parquet as pq

        columns = self.field_names + ([self.label] if self.has_label else [])
        for batch in pq.ParquetFile(file).iter_batches(batch_size=self.batch_rows, columns=columns):
            labels = None
            if self.has_label:
                labels = self._labels(batch.column(self.label), file)
            elif need_label:
                raise ValueError(f"{file} has no label column {self.label!r} (option label=NAME)")
            yield labels, [self._field(batch.column(name), name, file) for name in self.field_names]

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


def load_parquet(
    spec: str,
    cache_dir=None,
    *,
    label: str = "label",
    fields=None,
    integer=(),
    min_count: int = 1,
    valid_files: int = 0,
    test_files: int = 0,
    rebuild: bool = False,
    progress: bool = True,
    batch_rows: int = _BATCH_ROWS,
) -> CTRData:
    """Preprocess Parquet files once into a cache and open it; see the module docstring."""
    min_count = check_count("min_count", min_count)
    files = expand_paths(spec)
    split = check_file_split(files, valid_files, test_files)
    source = ParquetSource(files, label, fields, integer, batch_rows)
    options = {
        "label": label,
        "fields": source.field_names,
        "integer": sorted(source.integer),
        "min_count": min_count,
        **split,
    }
    return open_cache(source, options, cache_dir, rebuild, progress)


class ParquetFormat(DataFormat):
    kind, HELP = "parquet", "Parquet file, directory, glob or comma list"
    OOV_LAYOUT = READS_ROWS = True
    TRAINED_ON = "Parquet files (fastme predict parquet:PATH encodes their rows)"

    @classmethod
    def load(cls, arg, spec, cache_dir, options):
        unknown = set(options) - PARQUET_OPTIONS
        if unknown or not arg:
            raise TypeError(
                f"give parquet:PATH (file, directory, glob or list); options: "
                f"{', '.join(sorted(PARQUET_OPTIONS))}; got {spec!r} "
                f"{sorted(unknown) or ''}"
            )
        return load_parquet(arg, cache_dir, **options)

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
        block_bytes=None,
    ):
        """Parquet file(s) encoded with the training cache's vocabulary and column options; the
        ids are the rows' numbers over all files counted from ``id_start`` (default 0), or the
        values of the column ``id_column``."""
        import pyarrow.parquet as pq
        from tqdm.auto import tqdm

        options = source.get("options") or {}
        files = ParquetSource(
            expand_paths(arg),
            options.get("label", "label"),
            options.get("fields"),
            options.get("integer", ()),
        )
        if id_column is not None and id_column not in pq.read_schema(files.files[0]).names:
            raise ValueError(
                f"--id-column: {files.files[0]} has no column {id_column!r} (its "
                f"columns: {', '.join(pq.read_schema(files.files[0]).names)})"
            )
        vocab = vocabulary()
        first = id_start or 0
        with tqdm(
            total=files.estimated_rows(),
            unit="row",
            unit_scale=True,
            disable=not progress,
            desc="predict parquet",
        ) as bar:
            for file in files.files:
                # the id column read alongside, in batches of the same rows
                id_batches = (
                    pq.ParquetFile(file).iter_batches(
                        batch_size=files.batch_rows, columns=[id_column]
                    )
                    if id_column is not None
                    else None
                )
                for labels, values in files.batches(file, need_label=False):
                    x = np.stack([indices(v, k) for v, k in zip(values, vocab)], axis=1)
                    n = len(x)
                    if id_batches is None:
                        ids = np.arange(first + tally.rows, first + tally.rows + n)
                    else:
                        ids = next(id_batches).column(0)
                        if len(ids) != n:
                            raise RuntimeError(f"{file}: the id column's batches do not match")
                    tally.rows += n
                    bar.update(n)
                    yield RowBlock(None, ids, n, None, x, labels)


FORMAT = ParquetFormat
