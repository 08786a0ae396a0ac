"""``fastme experiment toy|scale`` and ``fastme analyze``: the paper's collapse experiments and
the analysis of a trained checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastme._lock import LockedError
from fastme.analysis import toy as toy_module
from fastme.analysis.scale import DEFAULT_SCALES, DEFAULT_TRAIN
from fastme.cli import error, key_values
from fastme.models import MODELS
from fastme.ops import BACKENDS
from fastme.train.cli import MODEL_HELP
from fastme.train.config import add_config_arguments, config_options

_FMT = argparse.ArgumentDefaultsHelpFormatter


def add_parsers(subparsers) -> None:
    exp = subparsers.add_parser(
        "experiment", help="run one of the paper's experiments (toy, scale)",
        description="The paper's experiments; each writes JSON results and PNG figures to --out.")
    sub = exp.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    _add_toy(sub)
    _add_scale(sub)
    _add_analyze(subparsers)


# -- toy ------------------------------------------------------------------------------------------
def _add_toy(sub) -> None:
    d = toy_module.DEFAULTS
    p = sub.add_parser(
        "toy", help="Evidence II toy experiment (Appendix G, Figure 4)", formatter_class=_FMT,
        description="Three fields, D1 = D2 = 100; only E1 is trained (full-batch gradient descent "
                    "on random labels, FM-style interaction) while E2 and E3 stay fixed. Records "
                    "IA(E1) for a low-abundance E3 (D3 = 3 < K) and a high-abundance one "
                    "(D3 = 100 >> K).")
    p.add_argument("--d3", type=int, nargs="+", default=list(d["d3_values"]),
                   help="cardinalities of field 3")
    p.add_argument("--embed-dim", type=int, default=d["embed_dim"],
                   help="K (not given by the paper)")
    p.add_argument("--iterations", type=int, default=d["iterations"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--seeds", type=int, nargs="+", default=list(d["seeds"]))
    p.add_argument("--record-every", type=int, default=d["record_every"],
                   help="record IA every this many iterations")
    p.add_argument("--out", default="runs/experiment-toy", help="output directory")
    p.set_defaults(func=run_toy_command)


def run_toy_command(args) -> int:
    from fastme.analysis.plots import plot_toy

    try:
        result = toy_module.run_toy(d3_values=args.d3, embed_dim=args.embed_dim,
                                    iterations=args.iterations, lr=args.lr, seeds=args.seeds,
                                    record_every=args.record_every)
    except ValueError as exc:
        return error("experiment toy", exc)
    out = Path(args.out)
    png = plot_toy(result, out / "toy")  # writes toy.png and toy.json (all the data)
    for d3, run in result["runs"].items():
        print(f"D3 = {d3:>4}: IA(E1) {run['mean'][0]:.3f} -> {run['final_ia_mean']:.3f} "
              f"± {run['final_ia_std']:.3f} after {args.iterations} iterations")
    print(f"results: {out / 'toy.json'}  figure: {png}")
    return 0


# -- scale ----------------------------------------------------------------------------------------
def _add_scale(sub) -> None:
    p = sub.add_parser(
        "scale", help="SE vs ME scaling sweep (Section 5.2, Table 1, Figure 8)",
        formatter_class=_FMT,
        description="Train one backbone at every scale as SE (K = base * scale) and ME (scale "
                    "sets of size base) for each seed; report test AUC and per-field "
                    "information abundance, mean and std over seeds.")
    p.add_argument("--model", default="dcnv2", type=str.lower, choices=list(MODELS),
                   help=MODEL_HELP)
    p.add_argument("--scales", type=int, nargs="+", default=list(DEFAULT_SCALES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model constructor argument, e.g. hidden_dim=64 (repeatable)")
    p.add_argument("--data", default="synthetic",
                   help="synthetic, criteo:PATH, avazu:PATH or cache:DIR")
    p.add_argument("--cache-dir", default=None, help="where raw-file caches live")
    p.add_argument("--synthetic-samples", type=int, default=None,
                   help="rows of the synthetic data (default: the built-in size)")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra dataset option, e.g. min_count=4 (repeatable)")
    add_config_arguments(p, ("epochs", "batch_size", "lr", "weight_decay", "patience", "device"),
                         batch_size="the paper uses 2048 (docs/analysis.md: why not here)",
                         lr="the paper uses 1e-3")
    p.set_defaults(**DEFAULT_TRAIN)  # the sweep's CPU-sized defaults (see DEFAULT_TRAIN)
    p.add_argument("--seen-only", action="store_true",
                   help="compute IA on the embedding rows that occur in the training split only")
    p.add_argument("--no-checkpoints", action="store_true",
                   help="do not keep per-run checkpoints (runs are then never reused)")
    add_config_arguments(p, ("progress",))
    p.add_argument("--out", default=None,
                   help="output directory (default runs/experiment-scale-<model>-<data>)")
    p.set_defaults(func=run_scale_command)


def run_scale_command(args) -> int:
    from fastme.analysis.scale import run_scale
    from fastme.data import load_dataset

    kind = args.data.split(":", 1)[0]
    try:
        data_options = key_values(args.data_option, "--data-option")
        model_options = key_values(args.model_option, "--model-option")
        if args.synthetic_samples is not None:
            if kind != "synthetic":
                raise ValueError("--synthetic-samples only applies to --data synthetic")
            data_options["num_samples"] = args.synthetic_samples
        data = load_dataset(args.data, cache_dir=args.cache_dir, **data_options)
    except (ValueError, TypeError, OSError) as exc:
        return error("experiment scale", exc)
    out = Path(args.out or f"runs/experiment-scale-{args.model.lower()}-{kind}")
    train_options = config_options(args)
    try:
        summary = run_scale(args.model, data, scales=args.scales, seeds=args.seeds,
                            train_options=train_options, model_options=model_options,
                            backend=args.backend, out_dir=out, seen_only=args.seen_only,
                            keep_checkpoints=not args.no_checkpoints, data_spec=args.data,
                            data_options=data_options)
    except (ValueError, TypeError, OSError, LockedError) as exc:  # LockedError: a busy run
        return error("experiment scale", exc)
    print(f"{'scale':>6} {'SE test AUC':>20} {'ME test AUC':>20} {'SE IA/random':>13} "
          f"{'ME IA/random':>13}")
    for s in summary["scales"]:
        se, me = summary["se"].get(str(s)), summary["me"].get(str(s))
        cells = [f"{e['test_auc_mean']:.5f} ± {e['test_auc_std']:.5f}" if e else "-"
                 for e in (se, me)]
        # mean over fields of IA / E[IA(random)] (Appendix I)
        cells += [f"{e['mean_field_ia_over_random_mean']:.3f}" if e else "-" for e in (se, me)]
        print(f"{s:>6} {cells[0]:>20} {cells[1]:>20} {cells[2]:>13} {cells[3]:>13}")
    print(f"results: {out / 'scale.json'}  figures: {', '.join(summary['figures'].values())}")
    return 0


# -- analyze --------------------------------------------------------------------------------------
def _add_analyze(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="measure embedding collapse in a trained checkpoint", formatter_class=_FMT,
        description="Per-field information abundance, singular-value spectra, embedding-set "
                    "diversity and, for DCNv2, the sub-embedding IA and interaction patterns of "
                    "a checkpoint written by `fastme train` (or a run directory).")
    p.add_argument("checkpoint", help="best.pt / last.pt, or a run directory")
    p.add_argument("--out", default=None,
                   help="output directory (default: <checkpoint directory>/analysis)")
    p.add_argument("--data", default=None,
                   help="the training data (default: the data the checkpoint records; needed "
                        "only when the checkpoint does not record it or its cardinalities)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--synthetic-samples", type=int, default=None)
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seen-only", action="store_true",
                   help="analyse only embedding rows that occur in the training split (of the "
                        "recorded data, or of --data)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the 8/1/1 split (default: the run's)")
    p.add_argument("--split", type=int, default=None,
                   help="SE model: number of chunks its embedding is cut into for the diversity "
                        "baseline (default: chunks of the base embedding size)")
    p.add_argument("--layer", type=int, default=0, help="DCNv2 cross layer for sub-embeddings")
    p.add_argument("--model", default=None, type=str.lower, choices=list(MODELS),
                   help="override the checkpoint's backbone")
    p.add_argument("--mode", choices=("se", "me"), default=None)
    p.add_argument("--scale", type=int, default=None)
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run_analyze_command)


def run_analyze_command(args) -> int:
    from fastme.analysis.report import analyze_model, load_model, summary_lines, training_rows

    try:
        data = None
        if args.data:
            from fastme.data import load_dataset

            options = key_values(args.data_option, "--data-option")
            if args.synthetic_samples is not None:
                options["num_samples"] = args.synthetic_samples
            data = load_dataset(args.data, cache_dir=args.cache_dir, **options)
        model, meta = load_model(args.checkpoint,
                                 field_dims=data.field_dims if data is not None else None,
                                 model=args.model, mode=args.mode, scale=args.scale,
                                 model_options=key_values(args.model_option, "--model-option"))
        names = list(data.field_names) if data is not None else meta["field_names"]
        seen, seen_from = None, None
        if args.seen_only:
            seen, seen_from = training_rows(meta, data, args.split_seed)
        out = Path(args.out) if args.out else Path(meta["checkpoint"]).parent / "analysis"
        title = f"{meta['model']} {meta['mode'].upper()} x{meta['scale']}"
        result = analyze_model(model, out, field_names=names, seen_rows=seen, split=args.split,
                               layer=args.layer, title=title)
    except (ValueError, TypeError, OSError) as exc:
        return error("analyze", exc)
    print(f"{title} ({meta['checkpoint']})")
    if seen_from:
        print(f"rows: those seen in {seen_from}")
    for line in summary_lines(result):
        print(line)
    print(f"results: {out / 'analysis.json'}  figures: {', '.join(result['figures'].values())}")
    return 0
