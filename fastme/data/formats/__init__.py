"""Every dataset spec fastme reads, one module each, in :data:`FORMATS` by its name.

A format (a :class:`~fastme.data.formats.base.DataFormat`) owns its options, how it is loaded
for training (``load``), how ``fastme predict`` reads its rows (``READS_ROWS``, ``read_rows``,
a text format's ``layout``) and what ``fastme export`` ships for it (``OOV_LAYOUT``,
``sidecar``). Adding a format is one module here, named in the list below; the shared machinery
is in fastme.data (text reading, the encoder, the cache).
"""

from __future__ import annotations

from fastme.data.formats import avazu, cache, criteo, csv, npy, parquet, synthetic
from fastme.data.formats.base import DataFormat, RowTally, TextFormat

#: Every format by its spec's name, in the order help and errors list them.
FORMATS: dict[str, type[DataFormat]] = {
    m.FORMAT.kind: m.FORMAT for m in (synthetic, criteo, avazu, csv, parquet, npy, cache)
}
#: The raw delimited text formats (``criteo:PATH``, ``avazu:PATH``, ``csv:PATH``).
TEXT_FORMATS = {kind: fmt for kind, fmt in FORMATS.items() if issubclass(fmt, TextFormat)}


def get_format(spec: str) -> tuple[type[DataFormat], str]:
    """(the format, what follows its name's colon) of a dataset spec; ValueError if unknown."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"dataset spec must be a non-empty string, got {spec!r}")
    kind, _, arg = spec.partition(":")
    if kind.lower() not in FORMATS:
        raise ValueError(
            f"unknown dataset {spec!r}: use " + _either([fmt.spec() for fmt in FORMATS.values()])
        )
    return FORMATS[kind.lower()], arg


def help_text() -> str:
    """The ``--data`` help of the commands, from the formats' own."""
    return (
        _either([f"{fmt.spec()} ({fmt.HELP})" for fmt in FORMATS.values()])
        + "; raw, CSV and Parquet files are preprocessed once into a cache that later runs "
        "reuse (docs/data.md)"
    )


def _either(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1]


__all__ = [
    "FORMATS",
    "TEXT_FORMATS",
    "DataFormat",
    "RowTally",
    "TextFormat",
    "get_format",
    "help_text",
]
