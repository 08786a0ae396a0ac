"""``fastme experiment toy|scale|results``: the paper's collapse experiments, and the page of
their measured results."""

from __future__ import annotations

from pathlib import Path

from fastme._lock import LockedError
from fastme.cli.args import (
    DATA_ARGUMENTS,
    HelpFormatter,
    add_arguments,
    data_options,
    error,
    key_values,
)
from fastme.experiments import toy as toy_module
from fastme.experiments.scale import DEFAULT_TRAIN, PRESETS, TRAIN_SETTINGS
from fastme.train.config import add_config_arguments, config_options

_FMT = HelpFormatter


def add_parser(subparsers) -> None:
    exp = subparsers.add_parser(
        "experiment",
        formatter_class=_FMT,
        help="run one of the paper's experiments (toy, scale) or write docs/results.md",
        description="The paper's experiments; each writes JSON results and PNG figures to --out.",
    )
    sub = exp.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    _add_toy(sub)
    _add_scale(sub)
    _add_results(sub)


# -- toy ------------------------------------------------------------------------------------------
def _add_toy(sub) -> None:
    d = toy_module.DEFAULTS
    p = sub.add_parser(
        "toy",
        help="Evidence II toy experiment (Appendix G, Figure 4)",
        formatter_class=_FMT,
        description="Three fields, D1 = D2 = 100; only E1 is trained (full-batch gradient descent "
        "on random labels, FM-style interaction) while E2 and E3 stay fixed. Records "
        "IA(E1) for a low-abundance E3 (D3 = 3 < K) and a high-abundance one "
        "(D3 = 100 >> K).",
    )
    p.add_argument(
        "--d3", type=int, nargs="+", default=list(d["d3_values"]), help="cardinalities of field 3"
    )
    p.add_argument(
        "--embed-dim", type=int, default=d["embed_dim"], help="K (not given by the paper)"
    )
    p.add_argument("--iterations", type=int, default=d["iterations"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--seeds", type=int, nargs="+", default=list(d["seeds"]))
    p.add_argument(
        "--record-every",
        type=int,
        default=d["record_every"],
        help="record IA every this many iterations",
    )
    p.add_argument("--out", default="runs/experiment-toy", help="output directory")
    add_arguments(p, ("threads",))
    p.set_defaults(func=run_toy_command)


def run_toy_command(args) -> int:
    from fastme.analysis.plots import plot_toy

    try:
        result = toy_module.run_toy(
            d3_values=args.d3,
            embed_dim=args.embed_dim,
            iterations=args.iterations,
            lr=args.lr,
            seeds=args.seeds,
            record_every=args.record_every,
        )
    except ValueError as exc:
        return error("experiment toy", exc)
    out = Path(args.out)
    png = plot_toy(result, out / "toy")  # writes toy.png and toy.json (all the data)
    for d3, run in result["runs"].items():
        print(
            f"D3 = {d3:>4}: IA(E1) {run['mean'][0]:.3f} -> {run['final_ia_mean']:.3f} "
            f"± {run['final_ia_std']:.3f} after {args.iterations} iterations"
        )
    print(f"results: {out / 'toy.json'}  figure: {png}")
    return 0


# -- scale ----------------------------------------------------------------------------------------
def _preset_text(name: str) -> str:
    preset = PRESETS[name]
    train = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in preset["train"].items())
    return f"{preset['model']}, scales {' '.join(map(str, preset['scales']))}, {train}"


def _add_scale(sub) -> None:
    p = sub.add_parser(
        "scale",
        help="SE vs ME scaling sweep (Section 5.2, Table 1, Figure 8)",
        formatter_class=_FMT,
        description="Train one backbone at every scale as SE (K = base * scale) and ME (scale "
        "sets of size base) for each seed; report test AUC and per-field "
        "information abundance, mean and std over seeds.",
    )
    m = p.add_argument_group("model")
    add_arguments(m, ("model",))
    m.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu",
        help=f"named settings: cpu ({_preset_text('cpu')}: the built-in data on a CPU) or "
        f"paper ({_preset_text('paper')}: the paper's, for Criteo or Avazu on a GPU); --scales, "
        "--model, --batch-size and --lr override it",
    )
    m.add_argument("--scales", type=int, nargs="+", default=None, help="default: the preset's")
    m.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_arguments(m, ("backend", "model_option"))
    add_arguments(p.add_argument_group("data"), DATA_ARGUMENTS)
    add_config_arguments(
        p,
        TRAIN_SETTINGS,
        batch_size="default: the preset's (the paper uses 2048; docs/analysis.md: why the cpu "
        "preset does not)",
        lr="default: the preset's (the paper uses 1e-3)",
    )
    add_arguments(p, ("threads",))
    p.set_defaults(model=None, **{k: None for k in DEFAULT_TRAIN})  # filled from --preset
    p.add_argument(
        "--seen-only",
        action="store_true",
        help="compute IA on the embedding rows that occur in the training split only",
    )
    p.add_argument(
        "--no-checkpoints",
        action="store_true",
        help="do not keep per-run checkpoints (runs are then never reused)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default runs/experiment-scale-<model>-<data>, followed by "
        "-KEY=VALUE for each --model-option)",
    )
    p.set_defaults(func=run_scale_command)


def run_scale_command(args) -> int:
    from fastme.data import load_dataset
    from fastme.experiments.scale import conclusion, run_scale

    kind = args.data.split(":", 1)[0]
    try:
        data_opts = data_options(args)
        model_options = key_values(args.model_option, "--model-option")
        data = load_dataset(args.data, cache_dir=args.cache_dir, **data_opts)
    except (ValueError, TypeError, OSError) as exc:
        return error("experiment scale", exc)
    # model options name their own directory: an ablation (e.g. shared_interaction=true) must
    # not reuse or overwrite the default sweep's runs
    variant = "".join(f"-{k}={v}" for k, v in sorted(model_options.items())).replace("/", "_")
    preset = PRESETS[args.preset]
    args.model = args.model or preset["model"]
    out = Path(args.out or f"runs/experiment-scale-{args.model.lower()}-{kind}{variant}")
    for name, value in preset["train"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    train_options = config_options(args)
    try:
        summary = run_scale(
            args.model,
            data,
            scales=args.scales or preset["scales"],
            seeds=args.seeds,
            train_options=train_options,
            model_options=model_options,
            backend=args.backend,
            out_dir=out,
            seen_only=args.seen_only,
            keep_checkpoints=not args.no_checkpoints,
            data_spec=args.data,
            data_options=data_opts,
        )
    except (ValueError, TypeError, OSError, LockedError) as exc:  # LockedError: a busy run
        return error("experiment scale", exc)
    print(
        f"{'scale':>6} {'SE test AUC':>20} {'ME test AUC':>20} {'SE IA/random':>13} "
        f"{'ME IA/random':>13}"
    )
    for s in summary["scales"]:
        se, me = summary["se"].get(str(s)), summary["me"].get(str(s))
        cells = [
            f"{e['test_auc_mean']:.5f} ± {e['test_auc_std']:.5f}" if e else "-" for e in (se, me)
        ]
        # mean over fields of IA / E[IA(random)] (Appendix I)
        cells += [f"{e['mean_field_ia_over_random_mean']:.3f}" if e else "-" for e in (se, me)]
        print(f"{s:>6} {cells[0]:>20} {cells[1]:>20} {cells[2]:>13} {cells[3]:>13}")
    for line in conclusion(summary)["lines"]:
        print(line)
    print(f"results: {out / 'scale.json'}  figures: {', '.join(summary['figures'].values())}")
    return 0


# -- results --------------------------------------------------------------------------------------
def _add_results(sub) -> None:
    p = sub.add_parser(
        "results",
        help="run toy and scale with their defaults and write docs/results.md",
        formatter_class=_FMT,
        description="Run `fastme experiment toy` and `fastme experiment scale` with their "
        "defaults (finished scaling runs are reused) and render their tables and "
        "figures as a Markdown page.",
    )
    p.add_argument("--out", default="docs/results.md", help="the page to write")
    p.add_argument(
        "--from-outputs",
        action="store_true",
        help="do not run anything; render from the experiments' existing outputs",
    )
    p.add_argument(
        "--machine",
        default=None,
        help="a description of the machine (and anything measured outside this "
        "command, e.g. the CPU time of reused runs), for the page",
    )
    p.set_defaults(func=run_results_command)


def run_results_command(args) -> int:
    from fastme.experiments.results import write_results

    try:
        figures = write_results(args.out, args.from_outputs, args.machine)
    except (ValueError, OSError, LockedError) as exc:
        return error("experiment results", exc)
    print(f"wrote {args.out} and {figures}/")
    return 0
