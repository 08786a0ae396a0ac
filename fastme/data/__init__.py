"""Datasets for CTR training: the built-in synthetic data and preprocessed Criteo / Avazu / CSV
/ Parquet files.

``load_dataset(spec)`` is the one entry point: "synthetic", "criteo:PATH", "avazu:PATH",
"csv:PATH", "parquet:PATH", "npy:DIR" or "cache:DIR", each a module of
:mod:`fastme.data.formats`. See docs/data.md for the preprocessing.
"""

from __future__ import annotations

from fastme.data import sources
from fastme.data.cache import default_cache_root
from fastme.data.dataset import CTRData, load_cache, load_vocab
from fastme.data.formats import FORMATS, TEXT_FORMATS, get_format, help_text
from fastme.data.formats.npy import load_npy
from fastme.data.formats.parquet import load_parquet
from fastme.data.synthetic import DEFAULT_NUM_SAMPLES, SyntheticTeacher, make_synthetic

#: The default min_count of each raw text format.
DEFAULT_MIN_COUNT = {kind: fmt.MIN_COUNT for kind, fmt in TEXT_FORMATS.items()}


def load_dataset(spec: str, *, cache_dir=None, **options) -> CTRData:
    """Open a dataset by its spec: ``"synthetic"`` (:func:`make_synthetic`, options num_samples,
    seed, ...), ``"criteo:PATH"``, ``"avazu:PATH"``, ``"csv:PATH"`` (raw text, preprocessed on
    first use into a memory-mapped cache under ``cache_dir`` and reused afterwards; a glob,
    directory or comma list is one dataset, optionally split by file), ``"parquet:PATH"``,
    ``"npy:DIR"`` or ``"cache:DIR"``. Each is a module of :mod:`fastme.data.formats`, whose
    docstring and ``load`` say its options."""
    fmt, arg = get_format(spec)
    return fmt.load(arg, spec, cache_dir, options)


def preprocess(kind: str, path, cache_dir=None, **options) -> CTRData:
    """Preprocess one raw ``kind`` file (a key of :data:`TEXT_FORMATS`) once and open its cache;
    see :func:`fastme.data.sources.preprocess` for the options."""
    if kind not in TEXT_FORMATS:
        raise ValueError(f"unknown raw format {kind!r}; expected one of {', '.join(TEXT_FORMATS)}")
    return sources.preprocess(TEXT_FORMATS[kind], path, cache_dir, **options)


__all__ = [
    "CTRData",
    "DEFAULT_MIN_COUNT",
    "DEFAULT_NUM_SAMPLES",
    "FORMATS",
    "SyntheticTeacher",
    "default_cache_root",
    "help_text",
    "load_cache",
    "load_dataset",
    "load_npy",
    "load_parquet",
    "load_vocab",
    "make_synthetic",
    "preprocess",
]
