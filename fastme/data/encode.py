"""From parsed blocks of raw values to the int32 cache, in one pass over the source.

Every source that maps raw values to indices (a raw Criteo/Avazu file, several of them, Parquet)
feeds its blocks to one :class:`Encoder`. Each block's values are dictionary-encoded per field:
the block-local codes go to ``x.npy`` at once; the block's distinct values and their counts are
merged into the field's table of every value seen, and the global id of each of them is appended
to a scratch file. The source is read once. When it is done the vocabulary is fixed, and a pass
over the binary ``x.npy`` (not over the text) maps each block's codes, through those ids, to the
final indices.

Per field, indices are laid out as ``[kept values..., OOV, missing]``: values seen at least
``min_count`` times get 0..k-1 in order of decreasing count (ties by value), all rarer values
share the OOV index k, an empty cell gets the missing index k+1, so ``field_dims[i] = k + 2``.

Memory: one block, its codes and the value tables. Disk: the cache, plus 4 bytes per distinct
value per block in the scratch files until the end of the build.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastme.data.cache import NPY_HEADER_BYTES, NpyWriter, check_space

_SCRATCH = "scratch"
# A field's pooled blocks are merged into its table once they hold this many distinct values (or
# half as many as the table): large enough to keep merges rare, small next to the value tables
# summed over all the fields.
MERGE_POOL = 1 << 18
# A merge of this many values or more waits for any other such merge: their transient hash tables
# and copies are the build's peak of memory, and one at a time keeps it to the largest field's.
_LARGE_MERGE = 1 << 20
_large_merges = threading.Lock()


class _FieldValues:
    """One field's distinct values over all blocks, their counts, and for every block the global
    id of each of its distinct values (appended to a scratch file, block after block).

    Blocks are pooled and merged into the global table once the pool holds half as many values
    as the table: the table's values come first in the merge, so their ids never change, and the
    total merging work stays proportional to the number of distinct (block, value) pairs.
    """

    def __init__(self, name: str, ids_path: Path):
        self.name = name
        self.values: pa.Array | None = None  # by global id (order of first appearance)
        self.counts = np.zeros(0, dtype=np.int64)
        self.missing = 0
        self._pool: list[tuple[pa.Array, np.ndarray]] = []
        self._pool_rows = 0
        self.ids_path = ids_path
        self._ids = open(ids_path, "wb")

    def add(self, dictionary: pa.Array, counts: np.ndarray) -> None:
        self._pool.append((dictionary, counts))
        self._pool_rows += len(dictionary)
        if self._pool_rows >= max(MERGE_POOL, len(self.counts) // 2):
            self._merge()

    def _merge(self) -> None:
        if not self._pool:
            return
        large = len(self.counts) + self._pool_rows >= _LARGE_MERGE
        with _large_merges if large else contextlib.nullcontext():
            self._merge_pool()

    def _merge_pool(self) -> None:
        known = 0 if self.values is None else len(self.values)
        parts = ([] if self.values is None else [self.values]) + [d for d, _ in self._pool]
        kind = parts[0].type
        try:
            parts = [p if p.type == kind else p.cast(kind) for p in parts]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(
                f"field {self.name} holds values of type {kind} and of another "
                f"type that does not convert to it ({exc})"
            ) from exc
        # A chunked array is encoded against one dictionary, without first copying the parts
        # into one array.
        merged = pc.dictionary_encode(pa.chunked_array(parts, kind))
        if merged.num_chunks:  # (no chunks when every part was empty)
            self.values = merged.chunk(merged.num_chunks - 1).dictionary
        elif self.values is None:
            self.values = pa.array([], kind)
        ids = np.concatenate(
            [np.zeros(0, np.int32)] + [c.indices.to_numpy() for c in merged.chunks]
        )[known:].astype(np.int32, copy=False)
        del merged
        weights = np.concatenate([c for _, c in self._pool]).astype(np.float64)
        self.counts = np.concatenate(
            [self.counts, np.zeros(len(self.values) - known, dtype=np.int64)]
        )
        self.counts += np.bincount(ids, weights=weights, minlength=len(self.values)).astype(
            np.int64
        )
        self._ids.write(ids.data)
        self._pool, self._pool_rows = [], 0

    def finish(self, min_count: int) -> tuple[pa.Array, np.ndarray, dict]:
        """(kept values, most frequent first, ties by value; the final index of every global
        id; statistics for meta.json)."""
        self._merge()
        self._ids.close()
        if self.values is None:
            self.values = pa.array([], pa.string())
        frequent = np.flatnonzero(self.counts >= min_count)
        order = pa.table(
            {"c": self.counts[frequent], "v": self.values.take(frequent), "id": frequent}
        ).sort_by([("c", "descending"), ("v", "ascending")])
        kept, kept_ids = order.column("v").combine_chunks(), order.column("id").to_numpy()
        index = np.full(len(self.values), len(kept), dtype=np.int32)  # OOV unless kept
        index[kept_ids] = np.arange(len(kept), dtype=np.int32)
        # (a dictionary may hold a value no kept row uses: the cell of a malformed row)
        stats = {
            "field": self.name,
            "distinct": int(np.count_nonzero(self.counts)),
            "kept": len(kept),
            "oov_index": len(kept),
            "missing_index": len(kept) + 1,
            "rare_rows": int(self.counts.sum() - self.counts[kept_ids].sum()),
            "missing_rows": self.missing,
        }
        return kept, index, stats


def _dictionary(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(the values' dictionary, int32 codes into it with -1 for missing). A dictionary array is
    taken as it is: its dictionary may repeat a value (the integer fields' tokens), which the
    merge into the field's global table counts as one."""
    if not pa.types.is_dictionary(values.type):
        values = pc.dictionary_encode(values)
    codes = pc.fill_null(values.indices, -1).to_numpy(zero_copy_only=False)
    return values.dictionary, codes.astype(np.int32, copy=False)


def indices(values: pa.Array, kept: pa.Array) -> np.ndarray:
    """Field-local indices of raw ``values`` against a fixed vocabulary: position in ``kept``,
    else OOV (= len(kept)); missing (null) = len(kept) + 1."""
    dictionary, codes = _dictionary(values)
    oov = len(kept)
    table = np.full(len(dictionary) + 1, oov, dtype=np.int32)
    if len(kept) and len(dictionary):
        found = pc.index_in(dictionary, value_set=kept.cast(dictionary.type))
        table[:-1] = found.fill_null(oov).to_numpy(zero_copy_only=False)
    table[-1] = oov + 1  # code -1: missing
    return table[codes]


class Encoder:
    """Blocks of (labels, one array of raw values per field, null = missing) in, ``x.npy``
    (int32 [rows, fields]) and ``y.npy`` (float32) of the final indices out, in the directory
    ``tmp``; see the module docstring."""

    def __init__(self, tmp: Path, field_names: list[str], estimated_rows: int | None = None):
        self.tmp, self.field_names = Path(tmp), list(field_names)
        if estimated_rows:
            check_space(self.tmp, estimated_rows * (4 * len(self.field_names) + 4))
        self._scratch = self.tmp / _SCRATCH
        shutil.rmtree(self._scratch, ignore_errors=True)  # of an attempt that started over
        self._scratch.mkdir()
        self.x = NpyWriter(self.tmp / "x.npy", np.int32, (len(self.field_names),))
        self.y = NpyWriter(self.tmp / "y.npy", np.float32, ())
        self.fields = [
            _FieldValues(name, self._scratch / f"{i}.ids")
            for i, name in enumerate(self.field_names)
        ]
        self.positives = 0
        self._blocks: list[tuple[int, list[int]]] = []  # (rows, each field's distinct values)
        # Fields are independent and Arrow's hashing and numpy's gathers release the GIL, so
        # they are encoded on every core (beside the parser's threads).
        self._threads = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="fastme-encode"
        )

    @property
    def num_rows(self) -> int:
        return self.x.rows

    def __enter__(self) -> "Encoder":
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        if exc is not None:  # an abandoned build: close its files (finish closes them otherwise)
            self.close()

    def add(self, labels: np.ndarray, fields: list[pa.Array]) -> None:
        n = len(labels)
        if n == 0:
            return
        block = np.empty((len(fields), n), dtype=np.int32)  # field-major: contiguous writes

        def encode(i: int) -> int:
            dictionary, codes = _dictionary(fields[i])
            block[i] = codes
            counts = np.bincount(codes + 1, minlength=len(dictionary) + 1)
            self.fields[i].missing += int(counts[0])
            self.fields[i].add(dictionary, counts[1:])
            return len(dictionary)

        sizes = list(self._threads.map(encode, range(len(fields))))
        self.x.append(block.T)
        self.y.append(labels)
        self.positives += int(labels.sum())
        self._blocks.append((n, sizes))

    def close(self) -> None:
        """Close the files of a build that is abandoned."""
        for f in [self.x.file, self.y.file] + [field._ids for field in self.fields]:
            f.close()
        self._threads.shutdown()

    def finish(self, min_count: int) -> tuple[list[pa.Array], list[int], list[dict]]:
        """Fix the vocabulary and rewrite the codes as indices; returns (kept values per field,
        field_dims, per-field statistics for meta.json)."""
        self.x.close()
        self.y.close()
        vocab, index_tables, stats = [], [], []
        for field in self.fields:  # one at a time: a field's last merge is the build's peak
            kept, index, field_stats = field.finish(min_count)
            vocab.append(kept)
            index_tables.append(np.append(index, np.int32(len(kept) + 1)))  # code -1: missing
            stats.append(field_stats)
            field.values = field.counts = None  # the largest things held: free them early
        self._rewrite(index_tables)
        self._threads.shutdown()
        shutil.rmtree(self._scratch)
        return vocab, [len(kept) + 2 for kept in vocab], stats

    def _rewrite(self, index_tables: list[np.ndarray]) -> None:
        """Each block's codes -> global ids (the scratch files) -> final indices, in place. Plain
        reads and writes, block by block, not a memory map: the cache's pages never count as the
        process's memory."""
        row_bytes = 4 * len(self.field_names)
        ids = [open(field.ids_path, "rb") for field in self.fields]
        try:
            with open(self.x.path, "r+b") as x:
                offset = NPY_HEADER_BYTES
                for rows, sizes in self._blocks:
                    codes = np.frombuffer(
                        os.pread(x.fileno(), rows * row_bytes, offset), dtype=np.int32
                    )
                    block = codes.reshape(rows, -1).T.copy()  # field-major: contiguous gathers

                    def rewrite(f: int, block=block, sizes=sizes) -> None:
                        block_ids = np.fromfile(ids[f], dtype=np.int32, count=sizes[f])
                        # the block's code -> final index; code -1 (missing): the last entry
                        table = np.append(index_tables[f][block_ids], index_tables[f][-1])
                        block[f] = table[block[f]]

                    list(self._threads.map(rewrite, range(len(sizes))))
                    data = np.ascontiguousarray(block.T).data
                    if os.pwrite(x.fileno(), data, offset) != data.nbytes:
                        raise OSError(f"short write to {self.x.path}")
                    offset += rows * row_bytes
        finally:
            for f in ids:
                f.close()
