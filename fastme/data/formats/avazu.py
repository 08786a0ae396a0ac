"""``avazu:PATH``: the Kaggle Avazu CTR challenge's ``train`` file (and, to score, its ``test``
file), with or without its header line."""

from __future__ import annotations

import datetime
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastme.data.formats.base import Layout, TextFormat
from fastme.data.text import convert_options, count_true, first_bad, first_line, header_option

AVAZU_COLUMNS = [
    "id",
    "click",
    "hour",
    "C1",
    "banner_pos",
    "site_id",
    "site_domain",
    "site_category",
    "app_id",
    "app_domain",
    "app_category",
    "device_id",
    "device_ip",
    "device_model",
    "device_type",
    "device_conn_type",
    "C14",
    "C15",
    "C16",
    "C17",
    "C18",
    "C19",
    "C20",
    "C21",
]
AVAZU_TEST_COLUMNS = [c for c in AVAZU_COLUMNS if c != "click"]
AVAZU_CAT = AVAZU_COLUMNS[3:]

_HEADER_NONE = "header=none (--data-option header=none)"


def avazu_columns(path, first_line: str, header: bool = True, labeled: bool = True) -> list[str]:
    """The columns of an Avazu file, told by its first line: the train file's (id, click, hour,
    C1..C21) or, unless ``labeled``, the test file's (the same without click). Without a header
    line (``header=False``) the first row's column count tells them apart (24 or 23).
    ValueError naming the file, and the option header=none where it may be what is missing."""
    cells = first_line.split(",")
    layouts = [AVAZU_COLUMNS] if labeled else [AVAZU_COLUMNS, AVAZU_TEST_COLUMNS]
    expected = repr(",".join(AVAZU_COLUMNS)) + ("" if labeled else " or the same without click")
    test_file = (
        f"{path} is Avazu's test file (no click column): it has no labels to train on; "
        f"score it with fastme predict"
    )
    if header:
        if cells in layouts:
            return cells
        if cells == AVAZU_TEST_COLUMNS:
            raise ValueError(test_file)
        row = cells[0].isdigit() and len(cells) in (len(AVAZU_COLUMNS), len(AVAZU_TEST_COLUMNS))
        what = (
            f"{path} does not look like {'the' if labeled else 'an'} Avazu "
            f"{'train' if labeled else 'train or test'} file"
        )
        if row:
            raise ValueError(
                f"{what}: its first line looks like a row, not a header "
                f"({first_line[:100]!r}); for a file without a header line, pass "
                f"the option {_HEADER_NONE}. The header expected is {expected}"
            )
        raise ValueError(
            f"{what}: its header is {first_line[:200]!r}, expected {expected}. For "
            f"a file without a header line, pass the option {_HEADER_NONE}"
        )
    if cells in layouts or cells == AVAZU_TEST_COLUMNS:
        raise ValueError(
            f"{path} has a header line ({first_line[:80]!r}...): leave out the option header=none"
        )
    for names in layouts:
        if len(cells) == len(names):
            return list(names)
    if len(cells) == len(AVAZU_TEST_COLUMNS):
        raise ValueError(test_file)
    raise ValueError(
        f"{path} does not look like an Avazu file without a header line: its first "
        f"line has {len(cells)} comma-separated columns, expected "
        f"{len(AVAZU_COLUMNS)} (id, click, hour, C1..C21)"
        + ("" if labeled else f" or {len(AVAZU_TEST_COLUMNS)} (without click)")
    )


class AvazuFormat(TextFormat):
    """Kaggle Avazu ``train``: comma-separated with a header; id (dropped), click (label), hour
    (YYMMDDHH) and 21 categorical columns.

    ``hour="split"``: hour-of-day (0-23) and weekday (0 = Monday) fields in place of hour.
    ``hour="raw"``: the YYMMDDHH string as one categorical field (the reference code).
    ``header="none"``: the file has no header line (its rows are still the 24 columns).
    """

    kind, delimiter, label = "avazu", ",", "click"
    columns = AVAZU_COLUMNS  # check_header: the header is exactly these names
    OPTIONS, READ_OPTIONS = ("hour", "header"), ("header",)
    HELP = "raw Kaggle train CSV; --data-option header=none without its header line"
    MIN_COUNT, OOV_LAYOUT = 2, True

    def __init__(self, hour: str = "split", header="present"):
        if hour not in ("split", "raw"):
            raise ValueError(f"hour must be 'split' or 'raw', got {hour!r}")
        self.hour = hour
        # Not among options(): it changes no index (a file's content tells whether it has one).
        self.header = header_option(header)
        self.field_names = (["hour_of_day", "weekday"] if hour == "split" else ["hour"]) + AVAZU_CAT

    def options(self) -> dict:
        return {"hour": self.hour}

    def convert_options(self):
        # id is never read into memory (and overflows int64 anyway)
        return convert_options(AVAZU_COLUMNS[1:])

    def check_header(self, path, first_line):
        avazu_columns(path, first_line.decode("utf-8", "replace").rstrip("\r\n"), self.header)

    def layout(self, path):
        """Avazu ``train`` (header with ``click``) or ``test`` (no ``click``), identified by
        ``id``; with the option ``header=none``, the same files without their header line."""
        first = first_line(path).rstrip(b"\r").decode("utf-8", errors="replace")
        columns = avazu_columns(path, first, self.header, labeled=False)
        return Layout(
            ",",
            self.header,
            columns,
            "id",
            "id",
            "click",
            "click",
            header_names=columns if self.header else None,
        )

    def parse(self, batch, bad):
        ok = self._label_ok(batch, bad)
        if self.hour == "split":
            hour = batch.column("hour")
            known, hour_of_day, weekday = _valid_hours(hour)
            good = pc.is_in(hour, value_set=known)
            rejected = pc.and_(ok, pc.invert(good))
            n_rejected = count_true(rejected)
            if n_rejected:
                bad.bad_hour += n_rejected
                bad.note(f"hour {first_bad(hour, rejected)!r} is not a YYMMDDHH date and hour")
            ok = pc.and_(ok, good)
        if count_true(ok) < batch.num_rows:
            batch = batch.filter(ok)
        if self.hour == "split":
            where = pc.index_in(batch.column("hour"), value_set=known).to_numpy(
                zero_copy_only=False
            )
            fields = [pa.array(hour_of_day[where]), pa.array(weekday[where])]
        else:
            fields = [batch.column("hour")]
        fields += [batch.column(name) for name in AVAZU_CAT]
        return ok, self._labels(batch), fields

    @classmethod
    def sidecar(cls, field_names, options):
        layout = {
            "delimiter": ",",
            "header": True,
            "columns": AVAZU_COLUMNS,
            "label": "click",
            "id": "id",
        }
        hour = 2 if options.get("hour", "split") == "split" else 1
        kinds = ["hour_of_day", "weekday"] if hour == 2 else ["string"]
        return (
            layout,
            kinds + ["string"] * (len(field_names) - hour),
            ["hour"] * hour + list(field_names[hour:]),
        )


def _valid_hours(hour: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The block's distinct hour cells that are real YYMMDDHH times, with their hour of day and
    weekday (0 = Monday). A file holds a few hundred distinct hours, so each is checked once with
    the strict ``datetime.strptime`` (which refuses 14022900, unlike a rolling-over parser)."""
    known, hour_of_day, weekday = [], [], []
    for value in pc.unique(hour).to_pylist():
        if value is None or not re.fullmatch(r"[0-9]{8}", value):
            continue
        try:
            stamp = datetime.datetime.strptime(value, "%y%m%d%H")
        except ValueError:
            continue
        known.append(value)
        hour_of_day.append(stamp.hour)
        weekday.append(stamp.weekday())
    return (
        pa.array(known, pa.string()),
        np.array(hour_of_day, dtype=np.int64),
        np.array(weekday, dtype=np.int64),
    )


FORMAT = AvazuFormat
