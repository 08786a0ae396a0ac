"""Score raw Criteo / Avazu rows with a model exported by ``fastme export``, without fastme.

This file imports nothing from fastme or torch: it needs Python >= 3.9, numpy and, to run an
ONNX model, onnxruntime. Copy it next to a service and use it there::

    python raw_scoring.py model.onnx test.txt --out preds.csv

or, in code, ``Scorer("model.onnx").score_rows(rows, columns)``.

For a model trained on raw Criteo or Avazu files, ``fastme export --out model.onnx`` writes
``model.onnx.encoding.json`` beside it and names it, with its SHA-256, in the model's metadata.
That sidecar holds everything that turns a raw row into the model's int64 indices as training
did; :class:`RawEncoder` applies it (docs/serving.md describes the format, for other languages):

- a row has one cell per column of its layout (Criteo: label, I1..I13, C1..C26, tab-separated,
  the label optional; Avazu: the header's columns, ``click`` optional); an empty cell is missing;
- a label cell, when the row has one, is ``0`` or ``1``;
- an integer cell (Criteo I1..I13) matches ``integer.pattern`` (decimal or 0x-hex); its value v
  becomes ``floor(ln(v)^2)`` (float64) when v > 2, else ``v - 2``;
- Avazu's hour (``hour=split``) is a real YYMMDDHH time, giving hour of day and weekday;
- each field's value then takes its position in the field's ``vocab``; any other value the
  field's ``oov_index``, a missing one its ``missing_index``.

A row that breaks a rule (wrong column count, not UTF-8, bad label, integer or hour) gets no
indices and a NaN probability, where ``fastme predict`` writes an empty one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import hashlib
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

ENCODING_FORMAT = "fastme-raw-encoding"
ENCODING_VERSION = 1
_BOM = b"\xef\xbb\xbf"
_HOUR = re.compile(r"[0-9]{8}")


class RawEncoder:
    """Raw cells -> the model's int64 indices, by the rules of an encoding sidecar (a dict, or
    :meth:`from_file`)."""

    def __init__(self, spec: dict):
        if spec.get("format") != ENCODING_FORMAT or spec.get("version") != ENCODING_VERSION:
            raise ValueError(f"not a version-{ENCODING_VERSION} {ENCODING_FORMAT} file")
        self.spec = spec
        self.dataset = spec["dataset"]
        self.delimiter = spec["delimiter"]
        self.label = spec["label"]
        self.fields = spec["fields"]
        self.columns = list(spec["columns"])  # of a training file (label included)
        self._integer = re.compile(spec["integer"]["pattern"])
        self._hour_format = spec["hour"]["format"]
        self._lookup = [{value: i for i, value in enumerate(f["vocab"])} for f in self.fields]

    @classmethod
    def from_file(cls, path, sha256: str | None = None) -> RawEncoder:
        """Read a sidecar; with ``sha256`` (from the model's metadata), refuse any other file."""
        data = Path(path).read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(
                f"{path} is not the encoding this model was exported with (its "
                f"SHA-256 differs from the model's metadata)"
            )
        return cls(json.loads(data))

    def unlabeled_columns(self) -> list:
        return [c for c in self.columns if c != self.label]

    def encode(self, rows, columns=None) -> tuple[np.ndarray, np.ndarray]:
        """(indices int64 [n, fields], ok bool [n]) of ``rows``: sequences of cells (str; "" or
        None is empty) in the order ``columns`` (default: a training file's, label first), or
        None for a row already known to be malformed. Rows with ok False hold zeros."""
        columns = list(self.columns if columns is None else columns)
        where = {c: j for j, c in enumerate(columns)}
        needed = {f["column"] for f in self.fields} - set(where)
        if needed:
            raise ValueError(f"columns {sorted(needed)} are missing from {columns}")
        n = len(rows)
        ok = np.array([r is not None and len(r) == len(columns) for r in rows], dtype=bool)
        cells = {c: [(r[j] or "") if k else "" for r, k in zip(rows, ok)] for c, j in where.items()}
        if self.label in where:
            ok &= np.array([v in ("0", "1") for v in cells[self.label]], dtype=bool)
        values = []
        for f in self.fields:
            column = cells[f["column"]]
            if f["kind"] == "integer":
                good, tokens = self._integers(column)
                ok &= good
                values.append(tokens)
            elif f["kind"] in ("hour_of_day", "weekday"):
                good, parts = self._hours(column, f["kind"])
                ok &= good
                values.append(parts)
            elif f["kind"] == "string":
                values.append([v if v != "" else None for v in column])
            else:
                raise ValueError(f"field {f['name']}: unknown kind {f['kind']!r}")
        x = np.zeros((n, len(self.fields)), dtype=np.int64)
        for i, (f, lookup, vals) in enumerate(zip(self.fields, self._lookup, values)):
            oov, missing = f["oov_index"], f["missing_index"]
            x[:, i] = [missing if v is None else lookup.get(v, oov) for v in vals]
        x[~ok] = 0
        return x, ok

    def _integers(self, column):
        """(cell is empty or an integer, tokens: None for empty) of one integer column."""
        good = np.ones(len(column), dtype=bool)
        v = np.zeros(len(column), dtype=np.int64)
        empty = np.zeros(len(column), dtype=bool)
        for r, cell in enumerate(column):
            if cell == "":
                empty[r] = True
            elif not self._integer.fullmatch(cell):
                good[r] = False
            else:
                v[r] = int(cell, 16) if cell[:2] in ("0x", "0X") else int(cell, 10)
        # The training transform, computed as training computes it (numpy, float64).
        with np.errstate(invalid="ignore"):
            logv = np.log(np.maximum(v, 3).astype(np.float64))
        tokens = np.where(v > 2, np.floor(logv * logv).astype(np.int64), v - 2).tolist()
        return good, [None if e else t for e, t in zip(empty.tolist(), tokens)]

    def _hours(self, column, part: str):
        """(cell is a real YYMMDDHH time, its hour of day or weekday) of Avazu's hour column."""
        good = np.ones(len(column), dtype=bool)
        out = []
        for r, cell in enumerate(column):
            stamp = None
            if _HOUR.fullmatch(cell):
                try:
                    stamp = datetime.datetime.strptime(cell, self._hour_format)
                except ValueError:
                    pass
            if stamp is None:
                good[r] = False
                out.append(None)
            else:
                out.append(stamp.hour if part == "hour_of_day" else stamp.weekday())
        return good, out


class Layout:
    """How a file's lines map onto the columns (as ``fastme predict`` recognises files)."""

    def __init__(self, delimiter, header, columns, id_column, id_name, probability_name):
        self.delimiter, self.header, self.columns = delimiter, header, columns
        self.id_column, self.id_name, self.probability_name = id_column, id_name, probability_name


def detect_layout(encoder: RawEncoder, first_line: str, path="the file") -> Layout:
    """Criteo: tab-separated train (label first) or test lines, or the competition's CSV with its
    header; Avazu: its header, with or without ``click``."""
    columns, unlabeled = encoder.columns, encoder.unlabeled_columns()
    if encoder.dataset == "criteo":
        if "\t" in first_line or "," not in first_line:
            n = first_line.count("\t") + 1
            if n in (len(columns), len(unlabeled)):
                return Layout(
                    "\t",
                    False,
                    columns if n == len(columns) else unlabeled,
                    None,
                    "row",
                    "probability",
                )
            raise ValueError(
                f"{path}: the first line has {n} tab-separated columns; a Criteo "
                f"file has {len(columns)} or {len(unlabeled)} (no label)"
            )
        names = first_line.split(",")
        if names in (["Id", "Label"] + unlabeled, ["Id"] + unlabeled):
            cols = ["Id"] + ([encoder.label] if names[1] == "Label" else []) + unlabeled
            return Layout(",", True, cols, "Id", "Id", "Predicted")
        raise ValueError(f"{path}: not a Criteo file (header {first_line[:80]!r})")
    names = first_line.split(encoder.delimiter)
    if names in (columns, unlabeled):
        return Layout(
            encoder.delimiter, True, names, encoder.spec["id"], encoder.spec["id"], encoder.label
        )
    raise ValueError(
        f"{path}: the header {first_line[:200]!r} is not Avazu's (with or without {encoder.label})"
    )


def read_lines(path) -> list:
    """The file's lines as text (None for one that is not UTF-8), split as ``fastme predict``
    splits them: on "\\n", a trailing "\\r" dropped, a leading byte-order mark skipped."""
    lines = Path(path).read_bytes().removeprefix(_BOM).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for line in lines:
        try:
            out.append(line.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError:
            out.append(None)
    return out


class Scorer:
    """An exported ONNX model with its encoding sidecar (found through the model's metadata)."""

    def __init__(self, model_path, encoding_path=None, batch_size: int = 8192):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map.get("fastme")
        if meta is None:
            raise ValueError(f"{model_path} carries no fastme metadata")
        self.meta = json.loads(meta)
        encoding = self.meta.get("encoding") or {}
        if not encoding.get("file"):
            raise ValueError(
                f"{model_path} has no raw-row encoding: "
                f"{encoding.get('note', 'exported by an older fastme')}"
            )
        path = encoding_path or Path(model_path).parent / encoding["file"]
        self.encoder = RawEncoder.from_file(path, encoding["sha256"])
        self.batch_size = int(batch_size)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(len(x), dtype=np.float32)
        for start in range(0, len(x), self.batch_size):
            xb = np.ascontiguousarray(x[start : start + self.batch_size], dtype=np.int64)
            out[start : start + len(xb)] = self.session.run(None, {"x": xb})[0]
        return out

    def score_rows(self, rows, columns=None) -> np.ndarray:
        """Click probabilities (float64; NaN for a malformed row) of rows of cells."""
        x, ok = self.encoder.encode(rows, columns)
        probs = np.full(len(x), np.nan)
        if ok.any():
            probs[ok] = self.probabilities(x[ok])
        return probs

    def score_file(self, path):
        """(layout, ids, probabilities) of a raw file, one per row in input order."""
        lines = read_lines(path)
        if not lines or lines[0] is None:
            raise ValueError(f"{path}: empty, or its first line is not UTF-8")
        layout = detect_layout(self.encoder, lines[0], path)
        if layout.header:
            lines = lines[1:]
        rows = [None if line is None else line.split(layout.delimiter) for line in lines]
        if layout.id_column is None:
            ids = list(range(len(rows)))
        else:
            j = layout.columns.index(layout.id_column)
            ids = [r[j] if r is not None and len(r) > j else "" for r in rows]
        return layout, ids, self.score_rows(rows, layout.columns)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Score a raw Criteo / Avazu file with an ONNX "
        "model exported by fastme (no fastme needed)."
    )
    parser.add_argument("model", help="model.onnx written by fastme export")
    parser.add_argument("data", help="raw file, laid out as fastme predict takes it")
    parser.add_argument("--out", default=None, help="output CSV (default: standard output)")
    parser.add_argument(
        "--encoding",
        default=None,
        help="the encoding sidecar (default: the one the model names, beside it)",
    )
    args = parser.parse_args(argv)
    try:
        layout, ids, probs = Scorer(args.model, args.encoding).score_file(args.data)
    except (ValueError, OSError) as exc:
        print(f"raw_scoring: error: {exc}", file=sys.stderr)
        return 2
    with (
        open(args.out, "w", newline="") if args.out else contextlib.nullcontext(sys.stdout)
    ) as handle:
        writer = csv.writer(handle)
        writer.writerow([layout.id_name, layout.probability_name])
        writer.writerows(zip(ids, ("" if math.isnan(p) else f"{p:.10g}" for p in probs.tolist())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
