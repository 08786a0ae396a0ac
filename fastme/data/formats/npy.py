"""``npy:DIR`` — ``DIR/x.npy`` holds already encoded indices (integer [n, N], field i's index in
``[0, field_dims[i])``), ``DIR/y.npy`` the 0/1 labels [n]; ``DIR/meta.json`` may give
``field_dims`` and ``field_names`` (default: max + 1 of each column, ``f0..``). int32/float32
arrays are used memory-mapped as they are; other dtypes are converted into a cache in chunks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fastme.data.cache import NpyWriter, build_or_reuse, cache_path, check_space, files_fingerprint
from fastme.data.dataset import CTRData, open_npy, write_meta
from fastme.data.formats.base import DataFormat
from fastme.data.sources import say


def load_npy(
    directory, cache_dir=None, *, progress: bool = True, chunk_rows: int = 1 << 20
) -> CTRData:
    """Already encoded arrays ``DIR/x.npy`` and ``DIR/y.npy`` (see the module docstring)."""
    directory = Path(directory).expanduser()
    for name in ("x.npy", "y.npy"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"npy:DIR needs {directory / name} (see docs/data.md)")
    x, y = (
        open_npy(directory / name, "write it again with numpy.save") for name in ("x.npy", "y.npy")
    )
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(
            f"{directory / 'x.npy'} must be an integer array [n, N], got {x.dtype} {x.shape}"
        )
    if y.shape != (len(x),):
        raise ValueError(f"{directory / 'y.npy'} must have shape ({len(x)},), got {y.shape}")
    meta = {}
    if (directory / "meta.json").is_file():
        meta = json.loads((directory / "meta.json").read_text())
    dims = meta.get("field_dims")
    if dims is None:  # one streaming pass for the maxima
        dims = np.zeros(x.shape[1], dtype=np.int64)
        for start in range(0, len(x), chunk_rows):
            dims = np.maximum(dims, np.asarray(x[start : start + chunk_rows]).max(axis=0) + 1)
        dims = dims.tolist()
    names = meta.get("field_names")
    info = {"dataset": "npy", "source": {"dir": str(directory.resolve())}}
    if x.dtype == np.int32 and y.dtype == np.float32:
        data = CTRData(x, y, dims, names, name="npy", info=info)
    else:  # convert once, in chunks, into a cache
        arrays = [directory / "x.npy", directory / "y.npy"]
        fingerprint = files_fingerprint(arrays)
        target = cache_path(
            cache_dir, f"npy-{directory.name}", fingerprint, {"kind": "npy", "meta": meta}
        )
        names = names or [f"f{i}" for i in range(len(dims))]

        def convert(tmp: Path) -> None:
            check_space(tmp, len(x) * (4 * x.shape[1] + 4))
            xo = NpyWriter(tmp / "x.npy", np.int32, (x.shape[1],))
            yo = NpyWriter(tmp / "y.npy", np.float32, ())
            for start in range(0, len(x), chunk_rows):
                xo.append(x[start : start + chunk_rows])
                yo.append(y[start : start + chunk_rows])
            xo.close()
            yo.close()
            write_meta(
                tmp,
                names,
                dims,
                len(x),
                {**info, "source": {**info["source"], "fingerprint": fingerprint}},
            )
            say(progress, f"npy: converted {directory} to int32/float32 in {target}")

        try:  # load_cache validates the indices against field_dims
            data = build_or_reuse(target, fingerprint, convert, name="npy", files=arrays)
        except ValueError as exc:
            raise ValueError(f"{directory}: {exc} (meta.json field_dims too small?)") from exc
    for start in range(0, len(data), chunk_rows):
        labels = np.asarray(data.y[start : start + chunk_rows])
        if not np.isin(labels, (0.0, 1.0)).all():
            raise ValueError(f"{directory / 'y.npy'}: labels must be 0 or 1")
    try:
        data.check_indices(chunk_rows)
    except ValueError as exc:
        raise ValueError(f"{directory}: {exc} (meta.json field_dims too small?)") from exc
    return data


class NpyFormat(DataFormat):
    kind, ARG, HELP, OOV_LAYOUT = "npy", "DIR", "encoded x.npy and y.npy", True
    TRAINED_ON = "already encoded npy arrays"

    @classmethod
    def load(cls, arg, spec, cache_dir, options):
        if not arg or set(options) - {"progress"}:
            raise TypeError(
                f"give npy:DIR (holding x.npy and y.npy); it takes no options but "
                f"progress, got {spec!r} {sorted(options)}"
            )
        return load_npy(arg, cache_dir, **options)


FORMAT = NpyFormat
