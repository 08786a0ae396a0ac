"""``CTRData``: a CTR dataset as per-field integer indices and click labels, plus its on-disk cache.

The cache is a directory holding ``x.npy`` (int32 [n, N]), ``y.npy`` (float32 [n]) and
``meta.json`` (field names and cardinalities, how the cache was built); raw-file caches add
``vocab.json``. The arrays are plain ``.npy`` files opened memory-mapped, so a 45M-row dataset is
used without reading it into memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from fastme._atomic import write_text

CACHE_FORMAT = 1


class CTRData:
    """Per-field indices ``x`` [n, N] (int32) and labels ``y`` [n] (float32, 0/1).

    ``x[r, i]`` is in ``[0, field_dims[i])``. A dataset may be a *subset* of another (what
    :meth:`split` returns): it then shares the parent's arrays and holds the selected row
    numbers, so splitting a memory-mapped dataset copies nothing. ``.x`` / ``.y`` of a subset
    gather its rows into memory; the trainer instead gathers batch by batch through
    :meth:`base_arrays` and :meth:`row_numbers`.
    """

    def __init__(
        self,
        x,
        y,
        field_dims,
        field_names=None,
        *,
        name: str = "data",
        rows=None,
        info: dict | None = None,
    ):
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != np.int32:
            raise TypeError(
                f"x must be an int32 numpy array [n, N], got "
                f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
            )
        if not isinstance(y, np.ndarray) or y.ndim != 1 or y.dtype != np.float32:
            raise TypeError(
                f"y must be a float32 numpy array [n], got "
                f"{getattr(y, 'dtype', type(y).__name__)} {getattr(y, 'shape', '')}"
            )
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        field_dims = [int(d) for d in field_dims]
        if len(field_dims) != x.shape[1] or min(field_dims, default=0) < 1:
            raise ValueError(
                f"field_dims must hold one positive cardinality per column of x "
                f"({x.shape[1]}), got {field_dims}"
            )
        if field_names is None:
            field_names = [f"f{i}" for i in range(len(field_dims))]
        field_names = [str(f) for f in field_names]
        if len(field_names) != len(field_dims):
            raise ValueError(
                f"field_names has {len(field_names)} names for {len(field_dims)} fields"
            )
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(x))):
                raise ValueError("rows must be a 1-D array of row numbers within the data")
        self._x, self._y, self._rows = x, y, rows
        self.field_dims = field_dims
        self.field_names = field_names
        self.name = name
        self.info = dict(info or {})

    # -- shape ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._x) if self._rows is None else len(self._rows)

    @property
    def num_fields(self) -> int:
        return len(self.field_dims)

    def __repr__(self) -> str:
        return (
            f"CTRData({self.name!r}, rows={len(self):,}, fields={self.num_fields}, "
            f"sum(field_dims)={sum(self.field_dims):,})"
        )

    # -- arrays -------------------------------------------------------------------------------
    @property
    def x(self) -> np.ndarray:
        """int32 [n, N]; the (memory-mapped) array itself for a full dataset, a gathered copy for
        a subset."""
        return self._x if self._rows is None else self._x[self._rows]

    @property
    def y(self) -> np.ndarray:
        """float32 [n] labels (0.0 / 1.0)."""
        return self._y if self._rows is None else self._y[self._rows]

    def base_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The full underlying (x, y), shared by every subset of the same data."""
        return self._x, self._y

    def row_numbers(self) -> np.ndarray:
        """This dataset's rows as row numbers into :meth:`base_arrays`, in this dataset's order."""
        return np.arange(len(self._x), dtype=np.int64) if self._rows is None else self._rows

    def subset(self, rows, name: str | None = None) -> "CTRData":
        """The rows ``rows`` (positions within this dataset) as a dataset sharing the arrays."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(self))):
            raise ValueError(f"subset rows must be positions in [0, {len(self)})")
        base_rows = rows if self._rows is None else self._rows[rows]
        return CTRData(
            self._x,
            self._y,
            self.field_dims,
            self.field_names,
            name=name or self.name,
            rows=base_rows,
            info=self.info,
        )

    def split(self, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> tuple["CTRData", ...]:
        """Random split into ``len(fractions)`` parts (default train/valid/test 8/1/1).

        As in the paper's code: one ``torch.randperm`` from a generator seeded with ``seed``; the
        parts take floor(f * n) rows each, in permutation order, and the last part takes the rest.
        Deterministic for a given seed and torch version.

        Data preprocessed with a split by file (``info["file_split"]``, see
        fastme.data.sources) returns that split instead (train, valid, test row ranges; without
        validation files, a seeded random 1/9 of the training rows).
        """
        if self.info.get("file_split") and self._rows is None:
            return self._file_split(self.info["file_split"], seed)
        fractions = [float(f) for f in fractions]
        if (
            len(fractions) < 2
            or min(fractions) < 0
            or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
        ):
            raise ValueError(
                f"fractions must be >= 2 non-negative numbers summing to 1, got {fractions}"
            )
        n = len(self)
        # round() first so that e.g. 0.7 * 10 = 7.000000000000001 and 0.3 * 10 floor as expected
        sizes = [math.floor(round(f * n, 6)) for f in fractions[:-1]]
        sizes.append(n - sum(sizes))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
        names = (
            ["train", "valid", "test"]
            if len(sizes) == 3
            else [f"part{i}" for i in range(len(sizes))]
        )
        parts, start = [], 0
        for size, part in zip(sizes, names):
            parts.append(self.subset(perm[start : start + size], name=f"{self.name}/{part}"))
            start += size
        return tuple(parts)

    def _file_split(self, split: dict, seed: int) -> tuple["CTRData", ...]:
        train = np.arange(*split["train"])
        if split.get("valid"):
            valid = np.arange(*split["valid"])
        else:
            perm = torch.randperm(
                len(train), generator=torch.Generator().manual_seed(int(seed))
            ).numpy()
            cut = len(train) // 9
            valid, train = np.sort(train[perm[:cut]]), np.sort(train[perm[cut:]])
        return tuple(
            self.subset(rows, name=f"{self.name}/{part}")
            for part, rows in (
                ("train", train),
                ("valid", valid),
                ("test", np.arange(*split["test"])),
            )
        )

    def positive_rate(self) -> float:
        return float(self.y.mean()) if len(self) else float("nan")

    def check_indices(self, chunk_rows: int = 1 << 20) -> None:
        """Raise ValueError unless every index lies in ``[0, field_dims[i])`` (reads all rows)."""
        dims = np.asarray(self.field_dims)
        for start in range(0, len(self._x), chunk_rows):
            block = np.asarray(self._x[start : start + chunk_rows])
            if block.min(axis=0).min() >= 0 and (block.max(axis=0) < dims).all():
                continue
            r, i = np.argwhere((block < 0) | (block >= dims))[0]
            raise ValueError(
                f"{self.name}: row {start + r} field {self.field_names[i]} has "
                f"index {block[r, i]} outside [0, {dims[i]})"
            )

    def check_labels(self, chunk_rows: int = 1 << 22) -> None:
        """Raise ValueError unless every label is 0 or 1 (reads all labels)."""
        for start in range(0, len(self._y), chunk_rows):
            block = np.asarray(self._y[start : start + chunk_rows])
            bad = (block != 0) & (block != 1)
            if bad.any():
                r = int(np.argmax(bad))
                raise ValueError(f"{self.name}: row {start + r} has label {block[r]}, not 0 or 1")

    def fingerprint(self) -> str:
        """A short hash of the data's content (shape, cardinalities and up to 65,536 rows spread
        evenly over it, all rows when there are fewer): two datasets of the same shape but other
        rows, such as synthetic data of another seed, differ in it."""
        n = len(self._x)
        rows = slice(None) if n <= 1 << 16 else np.linspace(0, n - 1, 1 << 16).astype(np.int64)
        digest = hashlib.blake2b(
            json.dumps([list(self._x.shape), self.field_dims]).encode(), digest_size=8
        )
        digest.update(np.ascontiguousarray(self._x[rows]).tobytes())
        digest.update(np.ascontiguousarray(self._y[rows]).tobytes())
        return digest.hexdigest()

    # -- cache --------------------------------------------------------------------------------
    def save(self, directory, vocab=None) -> Path:
        """Write this dataset as a cache directory (atomic: built aside, then renamed)."""
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "x.npy", np.ascontiguousarray(self.x))
        np.save(tmp / "y.npy", np.ascontiguousarray(self.y))
        write_meta(tmp, self.field_names, self.field_dims, len(self), self.info, vocab)
        return finish_cache(tmp, directory)


def write_meta(
    directory: Path, field_names, field_dims, num_rows: int, info: dict, vocab=None
) -> None:
    meta = {
        "format": CACHE_FORMAT,
        "num_rows": int(num_rows),
        "field_names": list(field_names),
        "field_dims": [int(d) for d in field_dims],
        **info,
    }
    write_text(directory / "meta.json", json.dumps(meta, indent=1))
    if vocab is not None:
        write_text(directory / "vocab.json", json.dumps(vocab))


def finish_cache(tmp: Path, directory: Path) -> Path:
    """Move a completely written cache into place, replacing an older one."""
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def read_meta(directory) -> dict | None:
    """The cache's meta.json, or None when the directory holds no complete cache."""
    path = Path(directory) / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == CACHE_FORMAT else None


def open_npy(path: Path, advice: str, what: str = "truncated") -> np.ndarray:
    """The array of ``path``, memory-mapped; a ValueError naming the file and giving ``advice``
    when it is ``what`` or not a .npy array."""
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path} is {what} or not a .npy array ({exc}); {advice}") from exc


def load_cache(directory, name: str | None = None) -> CTRData:
    """Open a cache directory memory-mapped (read-only).

    The arrays are checked against meta.json (shape, dtype) at every load, and their contents
    (every index within its field's cardinality, every label 0 or 1) once per version of the
    files: a ``validated.json`` stamp records the sizes and modification times that passed.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    if meta is None:
        raise FileNotFoundError(f"{directory} is not a fastme data cache (no valid meta.json)")
    rebuild = "delete the directory to rebuild it"
    arrays = {}
    for array, dtype, shape in (
        ("x", np.int32, (meta["num_rows"], len(meta["field_dims"]))),
        ("y", np.float32, (meta["num_rows"],)),
    ):
        path = directory / f"{array}.npy"
        arrays[array] = open_npy(path, rebuild, "missing, truncated")
        if arrays[array].dtype != dtype or arrays[array].shape != shape:
            raise ValueError(
                f"{path} holds {arrays[array].dtype} {arrays[array].shape}, but "
                f"meta.json describes {np.dtype(dtype)} {shape}; {rebuild}"
            )
    info = {
        k: v
        for k, v in meta.items()
        if k not in ("format", "num_rows", "field_names", "field_dims")
    }
    info["cache_dir"] = str(directory)
    try:
        data = CTRData(
            arrays["x"],
            arrays["y"],
            meta["field_dims"],
            meta["field_names"],
            name=name or meta.get("dataset", directory.name),
            info=info,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{directory}/meta.json does not fit the arrays: {exc}; {rebuild}"
        ) from exc
    _validate_once(data, directory, rebuild)
    return data


_STAMP = "validated.json"


def _file_versions(directory: Path) -> dict:
    return {
        name: [(directory / name).stat().st_size, (directory / name).stat().st_mtime_ns]
        for name in ("x.npy", "y.npy", "meta.json")
    }


def _validate_once(data: CTRData, directory: Path, rebuild: str) -> None:
    versions = _file_versions(directory)
    try:
        if json.loads((directory / _STAMP).read_text()) == versions:
            return
    except (OSError, ValueError):
        pass
    try:
        data.check_labels()
        data.check_indices()
    except ValueError as exc:
        raise ValueError(f"the cache {directory} is corrupt: {exc}; {rebuild}") from exc
    try:
        write_text(directory / _STAMP, json.dumps(versions))
    except OSError:
        pass  # a read-only cache is validated at every load instead


def load_vocab(data_or_directory) -> list | None:
    """The kept raw values of every field (index order), when the cache has them."""
    directory = (
        data_or_directory.info.get("cache_dir")
        if isinstance(data_or_directory, CTRData)
        else data_or_directory
    )
    if directory is None or not (Path(directory) / "vocab.json").is_file():
        return None
    return json.loads((Path(directory) / "vocab.json").read_text())


def training_vocab(where, field_dims, field_names=None, why: str = "") -> list:
    """The vocabulary of the training cache at ``where`` (a model of ``field_dims`` and, when
    given, ``field_names``); ValueError asking for ``--vocab DIR`` where it is missing or does
    not fit. ``why`` says what it is needed for."""
    vocab = load_vocab(where) if where else None
    if vocab is None:
        raise ValueError(
            f"the training cache's vocabulary (vocab.json){why} is not at "
            f"{where!r}; pass the training cache directory (--vocab DIR)"
        )
    dims = [len(v) + 2 for v in vocab]
    if dims != list(field_dims) or (field_names is not None and len(field_names) != len(vocab)):
        raise ValueError(
            f"the vocabulary in {where} does not fit the model: it gives field_dims "
            f"{dims[:6]}..., the model has {list(field_dims)[:6]}..."
        )
    return vocab
