"""``fastme export``: a trained checkpoint as a self-contained .pt2 or ONNX program."""

from __future__ import annotations

from fastme.cli.args import HelpFormatter, add_arguments, error
from fastme.train.config import TABLE_DTYPES, add_config_arguments

_FMT = HelpFormatter


def add_parser(subparsers) -> None:
    e = subparsers.add_parser(
        "export",
        help="export a trained model for serving (.pt2 or ONNX)",
        formatter_class=_FMT,
        description="Write a self-contained program: int64 per-field indices [B, N] -> click "
        "probabilities [B], any batch size, with the model spec, field "
        "cardinalities, OOV indices and example inputs/outputs as metadata. The "
        "format follows --out (.pt2 or .onnx). A model trained on raw Criteo or "
        "Avazu files also gets OUT.encoding.json: the vocabulary and the raw-row "
        "encoding, read by fastme/serve/raw_scoring.py (numpy + onnxruntime, no "
        "fastme). The export is checked against the eager model before it is put in "
        "place; a failed export leaves no file.",
    )
    e.add_argument("checkpoint", help="best.pt / last.pt, or a run directory")
    e.add_argument("--out", required=True, help="output file: NAME.pt2 or NAME.onnx")
    e.add_argument(
        "--format",
        choices=("pt2", "onnx"),
        default=None,
        help="must agree with --out's extension when given",
    )
    e.add_argument(
        "--bounds",
        choices=("oov", "raise"),
        default="oov",
        help="an index outside its field: map it to the field's OOV index, or raise (pt2 only)",
    )
    add_arguments(
        e.add_argument_group(
            "ops",
            "--backend: the ops traced into a pt2 (reference, the default: plain ATen ops, "
            "which load without fastme)",
        ),
        ("backend",),
    )
    add_config_arguments(e, ("device", "precision"))
    e.add_argument(
        "--table-dtype",
        choices=TABLE_DTYPES,
        default="fp32",
        help="how the program holds the embedding tables: bf16 halves the file and its memory "
        "(with --precision bf16 only)",
    )
    add_arguments(e, ("threads",))
    e.add_argument(
        "--vocab",
        default=None,
        metavar="CACHE_DIR",
        help="training cache holding vocab.json, for the encoding sidecar (default: "
        "the one the checkpoint records)",
    )
    e.set_defaults(func=run_export, backend="reference", device="cpu")


def run_export(args) -> int:
    from fastme.serve.export import export

    try:
        meta = export(
            args.checkpoint,
            args.out,
            args.format,
            bounds=args.bounds,
            backend=args.backend,
            device=args.device,
            vocab_dir=args.vocab,
            precision=args.precision,
            table_dtype=args.table_dtype,
        )
    except Exception as exc:  # noqa: BLE001 - any failure of an export is one line, no file
        return error("export", _one_line(exc))
    spec = meta["spec"]
    sidecar = meta["encoding"]["file"]
    print(
        f"exported {spec['name']} {spec['mode'].upper()} x{spec['scale']} "
        f"({len(meta['field_dims'])} fields, bounds {meta['bounds']}, {meta['precision']}"
        + (", bf16 tables" if meta["table_dtype"] == "bf16" else "")
        + ") "
        f"to {args.out}; "
        f"its example outputs match the eager model's (max difference "
        f"{meta['checked_max_difference']:.2g}); "
        + (
            f"raw {meta['encoding']['dataset']} rows are encoded by {sidecar} beside it"
            if sidecar
            else "no raw-row encoding (the model was not trained on raw files)"
        )
    )
    return 0


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line; the type where the message is not
    one of ours (an exporter's internal error)."""
    from fastme.ops import BackendUnavailable

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else "(no message)"
    if not isinstance(
        exc, (ValueError, TypeError, ImportError, OSError, AssertionError, BackendUnavailable)
    ):
        text = f"{type(exc).__name__}: {text}"
    return text + (" [...]" if len(lines) > 1 else "")
