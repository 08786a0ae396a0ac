"""``synthetic``: the built-in data of a known teacher (:mod:`fastme.data.synthetic`)."""

from __future__ import annotations

from fastme.data.formats.base import DataFormat
from fastme.data.synthetic import make_synthetic


class SyntheticFormat(DataFormat):
    """Not cached: it is regenerated deterministically in seconds."""

    kind, ARG, HELP = "synthetic", None, "built in"

    @classmethod
    def load(cls, arg, spec, cache_dir, options):
        if ":" in spec:
            raise ValueError(f"'synthetic' takes no path (use num_samples=...), got {spec!r}")
        return make_synthetic(**options)


FORMAT = SyntheticFormat
