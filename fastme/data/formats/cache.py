"""``cache:DIR``: a cache directory that fastme wrote (:func:`fastme.data.load_cache`)."""

from __future__ import annotations

from fastme.data.dataset import load_cache
from fastme.data.formats.base import DataFormat


class CacheFormat(DataFormat):
    kind, ARG, HELP = "cache", "DIR", "a preprocessed cache"

    @classmethod
    def load(cls, arg, spec, cache_dir, options):
        if options:
            raise TypeError(f"cache:DIR takes no options, got {', '.join(sorted(options))}")
        return load_cache(arg)


FORMAT = CacheFormat
