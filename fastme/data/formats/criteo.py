"""``criteo:PATH``: the Kaggle Display Advertising Challenge's ``train.txt`` (and, to score,
its ``test.txt`` or the competition's CSV files)."""

from __future__ import annotations

from fastme.data.formats.base import Layout, TextFormat
from fastme.data.text import first_line

CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
CRITEO_FIELD_NAMES = CRITEO_INT + CRITEO_CAT
CRITEO_COLUMNS = ["label"] + CRITEO_FIELD_NAMES


class CriteoFormat(TextFormat):
    """Kaggle Display Advertising Challenge ``train.txt``: tab-separated, no header, label,
    I1..I13 (integers), C1..C26 (hashed categories); any cell may be empty."""

    kind, delimiter, label = "criteo", "\t", "label"
    columns, header, integer = CRITEO_COLUMNS, False, CRITEO_INT
    HELP, MIN_COUNT, OOV_LAYOUT = "raw Kaggle train.txt", 10, True

    def __init__(self):
        self.field_names = CRITEO_FIELD_NAMES

    def check_header(self, path, first_line):
        if b"\t" in first_line or first_line.count(b",") < len(CRITEO_COLUMNS) - 1:
            return
        what = (
            "the Kaggle competition's comma-separated train.csv (Id,Label,I1..I13,C1..C26)"
            if first_line.lower().startswith(b"id,label,i1,")
            else f"comma-separated with {first_line.count(b',') + 1} columns"
        )
        raise ValueError(
            f"{path} is {what}, but criteo: reads the tab-separated train.txt of the Display "
            f"Advertising Challenge (label, I1..I13, C1..C26, no header). Convert it with: "
            f"tail -n +2 {path.name} | cut -d, -f2- | tr , '\\t' > train.txt"
        )

    def layout(self, path):
        """train.txt (40 tab-separated columns, label first) or test.txt (39, no label), rows
        identified by their 0-based line number; or the competition's CSV files, with header
        ``Id,Label,I1..I13,C1..C26`` or ``Id,I1..C26``, identified by ``Id``."""
        first = first_line(path).rstrip(b"\r").decode("utf-8", errors="replace")
        if "\t" in first or "," not in first:
            n = first.count("\t") + 1
            if n in (len(CRITEO_COLUMNS), len(CRITEO_COLUMNS) - 1):
                return Layout(
                    "\t",
                    False,
                    CRITEO_COLUMNS[len(CRITEO_COLUMNS) - n :],
                    None,
                    "row",
                    "probability",
                    "label",
                )
            raise ValueError(
                f"{path}: the first line has {n} tab-separated columns; a Criteo "
                f"file has 40 (label, I1..I13, C1..C26) or 39 (the test file)"
            )
        names = first.split(",")
        if names in (["Id", "Label"] + CRITEO_FIELD_NAMES, ["Id"] + CRITEO_FIELD_NAMES):
            columns = ["Id"] + (["label"] if names[1] == "Label" else []) + CRITEO_FIELD_NAMES
            return Layout(",", True, columns, "Id", "Id", "Predicted", "label", header_names=names)
        raise ValueError(
            f"{path}: comma-separated, but the header {first[:120]!r} is not the "
            f"Criteo competition's CSV (Id,Label,I1..I13,C1..C26 or Id,I1..C26)"
        )

    @classmethod
    def sidecar(cls, field_names, options):
        layout = {
            "delimiter": "\t",
            "header": False,
            "columns": CRITEO_COLUMNS,
            "label": "label",
            "id": None,
        }
        return (
            layout,
            ["integer" if name in CRITEO_INT else "string" for name in field_names],
            list(field_names),
        )


FORMAT = CriteoFormat
