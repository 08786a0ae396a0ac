"""``fastme analyze``: every collapse measurement of a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

from fastme.cli.args import (
    DATA_ARGUMENTS,
    HelpFormatter,
    add_arguments,
    data_options,
    error,
    key_values,
)

_FMT = HelpFormatter


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="measure embedding collapse in a trained checkpoint",
        formatter_class=_FMT,
        description="Per-field information abundance, singular-value spectra, embedding-set "
        "diversity and, for DCNv2, the sub-embedding IA and interaction patterns of "
        "a checkpoint written by `fastme train` (or a run directory).",
    )
    p.add_argument("checkpoint", help="best.pt / last.pt, or a run directory")
    p.add_argument(
        "--out", default=None, help="output directory (default: <checkpoint directory>/analysis)"
    )
    add_arguments(
        p.add_argument_group(
            "data",
            "the training data (default: the data the checkpoint records; needed only when "
            "the checkpoint does not record it or its cardinalities)",
        ),
        DATA_ARGUMENTS,
    )
    p.add_argument(
        "--seen-only",
        action="store_true",
        help="analyse only embedding rows that occur in the training split (of the "
        "recorded data, or of --data)",
    )
    p.add_argument(
        "--split-seed", type=int, default=None, help="seed of the 8/1/1 split (default: the run's)"
    )
    p.add_argument(
        "--split",
        type=int,
        default=None,
        help="SE model: number of chunks its embedding is cut into for the diversity "
        "baseline (default: chunks of the base embedding size)",
    )
    p.add_argument("--layer", type=int, default=0, help="DCNv2 cross layer for sub-embeddings")
    add_arguments(p, ("threads",))
    add_arguments(
        p.add_argument_group("model", "override the checkpoint's model spec"),
        ("model", "mode", "scale", "model_option"),
    )
    p.set_defaults(func=run_analyze_command, data=None, model=None, mode=None, scale=None)


def run_analyze_command(args) -> int:
    from fastme.experiments.report import analyze_model, load_model, summary_lines, training_rows

    try:
        data = None
        if args.data:
            from fastme.data import load_dataset

            data = load_dataset(args.data, cache_dir=args.cache_dir, **data_options(args))
        model, meta = load_model(
            args.checkpoint,
            field_dims=data.field_dims if data is not None else None,
            model=args.model,
            mode=args.mode,
            scale=args.scale,
            model_options=key_values(args.model_option, "--model-option"),
        )
        names = list(data.field_names) if data is not None else meta["field_names"]
        seen, seen_from = None, None
        if args.seen_only:
            seen, seen_from = training_rows(meta, data, args.split_seed)
        out = Path(args.out) if args.out else Path(meta["checkpoint"]).parent / "analysis"
        title = f"{meta['model']} {meta['mode'].upper()} x{meta['scale']}"
        result = analyze_model(
            model,
            out,
            field_names=names,
            seen_rows=seen,
            split=args.split,
            layer=args.layer,
            title=title,
        )
    except (ValueError, TypeError, OSError) as exc:
        return error("analyze", exc)
    print(f"{title} ({meta['checkpoint']})")
    if seen_from:
        print(f"rows: those seen in {seen_from}")
    for line in summary_lines(result):
        print(line)
    print(f"results: {out / 'analysis.json'}  figures: {', '.join(result['figures'].values())}")
    return 0
