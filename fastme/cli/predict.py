"""``fastme predict``: score a file with a trained checkpoint."""

from __future__ import annotations

import sys

from fastme.cli.args import HelpFormatter, add_arguments, error, key_values
from fastme.train.config import TABLE_DTYPES, add_config_arguments

_FMT = HelpFormatter


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="score a file with a trained model",
        formatter_class=_FMT,
        description="Write one click probability per input row, in input order, encoding the "
        "rows with the training cache's vocabulary. Raw Criteo (train.txt with "
        "labels, test.txt without, or the competition's CSV), Avazu (train or "
        "test, with or without their header line) and CSV files of the training "
        "run's columns are recognised; a malformed row keeps its place with an "
        "empty probability. With labels, AUC and log loss are reported.",
    )
    p.add_argument(
        "checkpoint", help="best.pt / last.pt written by fastme train, or its run directory"
    )
    p.add_argument(
        "--data",
        required=True,
        help="criteo:PATH, avazu:PATH or csv:PATH (raw file, of the kind the model "
        "was trained on), or any --data spec of fastme train (cache:DIR, "
        "parquet:PATH, npy:DIR, synthetic) scored in row order",
    )
    p.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="how the raw file is laid out, e.g. header=none for an Avazu file "
        "without its header line (repeatable); the training run's data options "
        "(hour, label, fields, ...) apply by themselves",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output CSV, written whole or not at all (default: no file, summary only)",
    )
    p.add_argument(
        "--id-start",
        type=int,
        default=None,
        metavar="N",
        help="id of the first row where rows are numbered (Criteo's test.txt: "
        "60000000, its Kaggle Ids; a Criteo output is then headed Id,Predicted)",
    )
    p.add_argument(
        "--id-column",
        default=None,
        metavar="NAME",
        help="take each row's id from this column of a file with named columns (CSV "
        "with a header, Parquet); not with --id-start",
    )
    p.add_argument(
        "--vocab",
        default=None,
        metavar="CACHE_DIR",
        help="training cache holding vocab.json (default: the one the checkpoint records)",
    )
    add_arguments(p, ("cache_dir",))
    p.add_argument(
        "--batch-size",
        type=int,
        default=4096,
        help="rows per model call (4096: the fastest per row measured on CPUs; larger "
        "batches outgrow the caches)",
    )
    add_arguments(p, ("backend",))
    add_config_arguments(p, ("device", "precision", "progress"))
    p.add_argument(
        "--table-dtype",
        choices=TABLE_DTYPES,
        default="fp32",
        help="how the embedding tables are held while scoring: bf16 halves their memory "
        "(with --precision bf16 only)",
    )
    add_arguments(p, ("threads",))
    p.set_defaults(func=run_predict, device="cpu")


def run_predict(args) -> int:
    from fastme.ops import BackendUnavailable
    from fastme.serve.predict import predict, print_summary

    try:
        summary = predict(
            args.checkpoint,
            args.data,
            args.out,
            vocab_dir=args.vocab,
            cache_dir=args.cache_dir,
            backend=args.backend,
            device=args.device,
            batch_size=args.batch_size,
            precision=args.precision,
            table_dtype=args.table_dtype,
            progress=args.progress,
            data_options=key_values(args.data_option, "--data-option"),
            id_start=args.id_start,
            id_column=args.id_column,
        )
    except (ValueError, TypeError, OSError, BackendUnavailable) as exc:
        return error("predict", exc)
    print_summary(summary, file=sys.stdout)
    return 0
