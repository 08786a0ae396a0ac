"""``fastme predict`` and ``fastme export``: use a trained checkpoint."""

from __future__ import annotations

import argparse
import sys

from fastme.cli import error, key_values

_FMT = argparse.ArgumentDefaultsHelpFormatter


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="score a file with a trained model", formatter_class=_FMT,
        description="Write one click probability per input row, in input order, encoding the "
                    "rows with the training cache's vocabulary. Raw Criteo (train.txt with "
                    "labels, test.txt without, or the competition's CSV), Avazu (train or "
                    "test, with or without their header line) and CSV files of the training "
                    "run's columns are recognised; a malformed row keeps its place with an "
                    "empty probability. With labels, AUC and log loss are reported.")
    p.add_argument("checkpoint", help="best.pt / last.pt written by fastme train, or its run "
                                      "directory")
    p.add_argument("--data", required=True,
                   help="criteo:PATH, avazu:PATH or csv:PATH (raw file, of the kind the model "
                        "was trained on), or any --data spec of fastme train (cache:DIR, "
                        "parquet:PATH, npy:DIR, synthetic) scored in row order")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="how the raw file is laid out, e.g. header=none for an Avazu file "
                        "without its header line (repeatable); the training run's data options "
                        "(hour, label, fields, ...) apply by themselves")
    p.add_argument("--out", default=None,
                   help="output CSV, written whole or not at all (default: no file, summary only)")
    p.add_argument("--id-start", type=int, default=None, metavar="N",
                   help="id of the first row where rows are numbered (Criteo's test.txt: "
                        "60000000, its Kaggle Ids; a Criteo output is then headed Id,Predicted)")
    p.add_argument("--id-column", default=None, metavar="NAME",
                   help="take each row's id from this column of a file with named columns (CSV "
                        "with a header, Parquet); not with --id-start")
    p.add_argument("--vocab", default=None, metavar="CACHE_DIR",
                   help="training cache holding vocab.json (default: the one the checkpoint "
                        "records)")
    p.add_argument("--cache-dir", default=None, help="cache root for non-raw --data specs")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--backend", default="reference", help="implementation of the fused ops")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict)

    e = subparsers.add_parser(
        "export", help="export a trained model for serving (.pt2 or ONNX)", formatter_class=_FMT,
        description="Write a self-contained program: int64 per-field indices [B, N] -> click "
                    "probabilities [B], any batch size, with the model spec, field "
                    "cardinalities, OOV indices and example inputs/outputs as metadata. The "
                    "format follows --out (.pt2 or .onnx). A model trained on raw Criteo or "
                    "Avazu files also gets OUT.encoding.json: the vocabulary and the raw-row "
                    "encoding, read by fastme/serve/raw_scoring.py (numpy + onnxruntime, no "
                    "fastme). The export is checked against the eager model before it is put in "
                    "place; a failed export leaves no file.")
    e.add_argument("checkpoint", help="best.pt / last.pt, or a run directory")
    e.add_argument("--out", required=True, help="output file: NAME.pt2 or NAME.onnx")
    e.add_argument("--format", choices=("pt2", "onnx"), default=None,
                   help="must agree with --out's extension when given")
    e.add_argument("--bounds", choices=("oov", "raise"), default="oov",
                   help="an index outside its field: map it to the field's OOV index, or raise "
                        "(pt2 only)")
    e.add_argument("--backend", default="reference",
                   help="ops traced into a pt2 (reference: plain ATen ops, loads without fastme)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--vocab", default=None, metavar="CACHE_DIR",
                   help="training cache holding vocab.json, for the encoding sidecar (default: "
                        "the one the checkpoint records)")
    e.set_defaults(func=run_export)


def run_predict(args) -> int:
    from fastme.ops import BackendUnavailable
    from fastme.serve.predict import predict, print_summary

    try:
        summary = predict(args.checkpoint, args.data, args.out, vocab_dir=args.vocab,
                          cache_dir=args.cache_dir, backend=args.backend, device=args.device,
                          batch_size=args.batch_size, progress=not args.no_progress,
                          data_options=key_values(args.data_option, "--data-option"),
                          id_start=args.id_start, id_column=args.id_column)
    except (ValueError, TypeError, OSError, BackendUnavailable) as exc:
        return error("predict", exc)
    print_summary(summary, file=sys.stdout)
    return 0


def run_export(args) -> int:
    from fastme.serve.export import export

    try:
        meta = export(args.checkpoint, args.out, args.format, bounds=args.bounds,
                      backend=args.backend, device=args.device, vocab_dir=args.vocab)
    except Exception as exc:  # noqa: BLE001 - any failure of an export is one line, no file
        return error("export", _one_line(exc))
    spec = meta["spec"]
    sidecar = meta["encoding"]["file"]
    print(f"exported {spec['name']} {spec['mode'].upper()} x{spec['scale']} "
          f"({len(meta['field_dims'])} fields, bounds {meta['bounds']}) to {args.out}; "
          f"its example outputs match the eager model's (max difference "
          f"{meta['checked_max_difference']:.2g}); "
          + (f"raw {meta['encoding']['dataset']} rows are encoded by {sidecar} beside it"
             if sidecar else "no raw-row encoding (the model was not trained on raw files)"))
    return 0


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line; the type where the message is not
    one of ours (an exporter's internal error)."""
    from fastme.ops import BackendUnavailable

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else "(no message)"
    if not isinstance(exc, (ValueError, TypeError, ImportError, OSError, AssertionError,
                            BackendUnavailable)):
        text = f"{type(exc).__name__}: {text}"
    return text + (" [...]" if len(lines) > 1 else "")
