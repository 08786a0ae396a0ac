"""``csv:PATH``: a delimited text file of one's own with a header line."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from fastme.data.formats.base import Layout, TextFormat
from fastme.data.text import check_file, column_list, first_line

DELIMITERS = {"tab": "\t", "\\t": "\t"}


class CsvFormat(TextFormat):
    """A user's own delimited text file (``csv:PATH``): a header line naming the columns, one
    0/1 label column (``label``, default "label"), every other column (or only those of
    ``fields``) a categorical field, the columns of ``integer`` (a subset of the fields) counts
    bucketized like Criteo's I1..I13; cells separated by ``delimiter`` (default ",", or "tab"),
    not quoted: a ``"`` is part of its cell.

    The columns come from the file's header line (``path``); ``labeled=False`` (prediction)
    lets the file lack the label column.
    """

    kind = "csv"
    header = True
    OPTIONS = ("label", "fields", "integer", "delimiter")
    HELP = "your own CSV with a header line; --data-option label=NAME, fields=a,b,c, integer=a"
    label_values = pa.array(
        ["0", "1", "0.0", "1.0", "false", "true", "False", "True", "FALSE", "TRUE"]
    )
    positive = pa.array(["1", "1.0", "true", "True", "TRUE"])

    @classmethod
    def from_options(cls, path, options, labeled):
        if path is None:
            raise ValueError("csv data needs its file (csv:PATH)")
        return cls(path, labeled=labeled, **options)

    def __init__(
        self, path, label="label", fields=None, integer=(), delimiter=",", labeled: bool = True
    ):
        self.path = check_file(path)
        delimiter = DELIMITERS.get(delimiter, delimiter)
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
            raise ValueError(f"delimiter must be one character (or 'tab'), got {delimiter!r}")
        self.delimiter, self.label = delimiter, str(label)
        self.columns = self._header(self.path, first_line(self.path))
        fields = column_list(fields, "fields") or [c for c in self.columns if c != self.label]
        self.integer = column_list(integer, "integer")
        where = f"{self.path} (columns: {', '.join(self.columns)[:300]})"
        if labeled and self.label not in self.columns:
            hint = next(
                (
                    f"; is it {name}-separated? (option delimiter={name})"
                    for name, c in (("tab", "\t"), (";", ";"), ("|", "|"))
                    if len(self.columns) == 1 and c in self.columns[0] and c != delimiter
                ),
                "",
            )
            raise ValueError(
                f"the label column {self.label!r} is not in {where} (option label=NAME){hint}"
            )
        missing = [c for c in dict.fromkeys(fields + self.integer) if c not in self.columns]
        if missing:
            raise ValueError(f"no column {', '.join(map(repr, missing))} in {where}")
        if self.label in fields:
            raise ValueError(f"the label column {self.label!r} of {self.path} cannot be a field")
        if not fields:
            raise ValueError(f"{self.path} has no feature column besides the label {self.label!r}")
        not_fields = [c for c in self.integer if c not in fields]
        if not_fields:
            raise ValueError(
                f"integer column(s) {', '.join(map(repr, not_fields))} of "
                f"{self.path} are not among the fields {fields}"
            )
        self.field_names = fields

    def _header(self, path: Path, first_line: bytes) -> list[str]:
        names = first_line.decode("utf-8", "replace").rstrip("\r").split(self.delimiter)
        if '"' in first_line.decode("utf-8", "replace"):
            raise ValueError(
                f"{path}: the header line holds a '\"': csv: reads plain delimited "
                f"text, without quoting (write it without quotes)"
            )
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{path}: the header names the column(s) {', '.join(twice)} twice")
        return names

    def options(self) -> dict:
        return {
            "label": self.label,
            "fields": self.field_names,
            "integer": self.integer,
            "delimiter": self.delimiter,
        }

    def check_header(self, path, first_line):
        names = self._header(path, first_line)
        if names != self.columns:
            raise ValueError(
                f"{path} has the columns {names}, but {self.path} has "
                f"{self.columns}: every file needs the same header"
            )

    def layout(self, path):
        """Its columns are its header, which the reader has read; rows identified by their
        number."""
        return Layout(
            self.delimiter,
            True,
            self.columns,
            None,
            "row",
            "probability",
            self.label,
            header_names=self.columns,
        )


FORMAT = CsvFormat
