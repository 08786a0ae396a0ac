"""Datasets for CTR training: the built-in synthetic data and preprocessed Criteo / Avazu / CSV
files.

``load_dataset(spec)`` is the one entry point: "synthetic", "criteo:PATH", "avazu:PATH",
"csv:PATH", "parquet:PATH", "npy:DIR" or "cache:DIR". See docs/data.md for the preprocessing.
"""

from __future__ import annotations

from fastme.data.cache import default_cache_root
from fastme.data.dataset import CTRData, load_cache, load_vocab
from fastme.data.raw import COMMON_OPTIONS, DEFAULT_MIN_COUNT, FORMATS, preprocess
from fastme.data.sources import (PARQUET_OPTIONS, is_multi_file, load_npy, load_parquet,
                                 load_raw_files)
from fastme.data.synthetic import DEFAULT_NUM_SAMPLES, SyntheticTeacher, make_synthetic

#: The options of each raw text format's spec: the format's own and those of every raw source.
_RAW_OPTIONS = {kind: set(COMMON_OPTIONS) | set(fmt.OPTIONS) for kind, fmt in FORMATS.items()}


def load_dataset(spec: str, *, cache_dir=None, **options) -> CTRData:
    """Open a dataset by its spec.

    - ``"synthetic"``: :func:`make_synthetic` (options: num_samples, seed, ...; not cached, it is
      regenerated deterministically in seconds).
    - ``"criteo:PATH"`` / ``"avazu:PATH"``: a raw Kaggle file, preprocessed on first use into a
      memory-mapped cache under ``cache_dir`` and reused afterwards (options: min_count, rebuild,
      progress; Avazu's hour and header; see :func:`fastme.data.raw.preprocess`). A glob,
      directory or comma list of raw files is one dataset, optionally split by file
      (valid_files, test_files; :func:`fastme.data.sources.load_raw_files`).
    - ``"csv:PATH"``: a delimited text file of one's own with a header line, preprocessed the
      same way (options: label, fields, integer, delimiter and the raw files' others; see
      :class:`fastme.data.raw.CsvFormat`).
    - ``"parquet:PATH"``: Parquet file(s) (a file, directory, glob or comma list), preprocessed
      like the raw files (options: label, fields, integer, min_count, valid_files, test_files,
      rebuild, progress; see :mod:`fastme.data.sources`).
    - ``"npy:DIR"``: already encoded ``x.npy`` / ``y.npy`` arrays.
    - ``"cache:DIR"``: an existing cache directory.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"dataset spec must be a non-empty string, got {spec!r}")
    kind, sep, arg = spec.partition(":")
    kind = kind.lower()
    if kind == "synthetic":
        if sep:
            raise ValueError(f"'synthetic' takes no path (use num_samples=...), got {spec!r}")
        return make_synthetic(**options)
    if kind in _RAW_OPTIONS and arg and (is_multi_file(arg) or {"valid_files", "test_files"}
                                         & set(options)):
        unknown = set(options) - _RAW_OPTIONS[kind] - {"valid_files", "test_files"}
        if unknown:
            raise TypeError(f"unknown option(s) for {kind} files: {', '.join(sorted(unknown))}")
        return load_raw_files(kind, arg, cache_dir, **options)
    if kind in _RAW_OPTIONS:
        if not arg:
            raise ValueError(f"give the raw file as {kind}:PATH, got {spec!r}")
        unknown = set(options) - _RAW_OPTIONS[kind]
        if unknown:
            raise TypeError(f"unknown option(s) for {kind} data: {', '.join(sorted(unknown))} "
                            f"(allowed: {', '.join(sorted(_RAW_OPTIONS[kind]))})")
        return preprocess(kind, arg, cache_dir, **options)
    if kind == "parquet":
        unknown = set(options) - PARQUET_OPTIONS
        if unknown or not arg:
            raise TypeError(f"give parquet:PATH (file, directory, glob or list); options: "
                            f"{', '.join(sorted(PARQUET_OPTIONS))}; got {spec!r} "
                            f"{sorted(unknown) or ''}")
        return load_parquet(arg, cache_dir, **options)
    if kind == "npy":
        if not arg or set(options) - {"progress"}:
            raise TypeError(f"give npy:DIR (holding x.npy and y.npy); it takes no options but "
                            f"progress, got {spec!r} {sorted(options)}")
        return load_npy(arg, cache_dir, **options)
    if kind == "cache":
        if options:
            raise TypeError(f"cache:DIR takes no options, got {', '.join(sorted(options))}")
        return load_cache(arg)
    raise ValueError(f"unknown dataset {spec!r}: use synthetic, criteo:PATH, avazu:PATH, "
                     f"csv:PATH, parquet:PATH, npy:DIR or cache:DIR")


__all__ = ["CTRData", "DEFAULT_MIN_COUNT", "DEFAULT_NUM_SAMPLES", "SyntheticTeacher",
           "default_cache_root", "load_cache", "load_dataset", "load_npy", "load_parquet",
           "load_vocab", "make_synthetic", "preprocess"]
