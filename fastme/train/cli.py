"""``fastme train``: train and evaluate an SE or ME model on synthetic, Criteo or Avazu data."""

from __future__ import annotations

import argparse
import ast
import re
import sys
import time

DATA_HELP = ("synthetic (built in), criteo:PATH (raw Kaggle train.txt), avazu:PATH (raw Kaggle "
             "train CSV) or cache:DIR (a preprocessed cache); raw files are preprocessed once into "
             "a cache that later runs reuse")


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train and evaluate a model (the paper's protocol)",
        description="Train an SE or ME model with the paper's protocol (8/1/1 split with seed 0, "
                    "Adam, early stopping on validation AUC) and report the test AUC of the best "
                    "epoch. Writes last.pt, best.pt and results.json to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", default="dcnv2",
                   help="backbone: dnn, ipnn, nfwfm, xdeepfm, dcnv2, finalmlp, autoint")
    m.add_argument("--mode", choices=("se", "me"), default="se",
                   help="se: one embedding of size base*scale; me: scale embeddings of size base")
    m.add_argument("--scale", type=int, default=1, help="model size multiplier (1, 2, 3, 4, 10)")
    m.add_argument("--backend", default="auto", choices=("auto", "reference", "triton", "cuda"),
                   help="implementation of the fused ops")
    m.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model constructor argument, e.g. hidden_dim=64 (repeatable)")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="synthetic", help=DATA_HELP)
    d.add_argument("--cache-dir", default=None,
                   help="where raw-file caches live (default $FASTME_CACHE_DIR or ~/.cache/fastme)")
    d.add_argument("--synthetic-samples", type=int, default=None,
                   help="rows of the synthetic data (default: the built-in size)")
    d.add_argument("--min-count", type=int, default=None,
                   help="raw data: values seen fewer times become the field's OOV index "
                        "(default 10 for Criteo, 2 for Avazu; the reference code uses 4 for Avazu)")
    d.add_argument("--avazu-hour", choices=("split", "raw"), default=None,
                   help="Avazu hour: split into hour-of-day and weekday (default) or the raw "
                        "YYMMDDHH value as one field (the reference code)")
    d.add_argument("--rebuild-cache", action="store_true", help="preprocess raw data again")
    d.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra load_dataset option, e.g. field_dims=[10,100,1000] or "
                        "interaction_scale=2.0 for synthetic data (repeatable)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=100, help="maximum epochs")
    t.add_argument("--batch-size", type=int, default=2048)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=1e-6)
    t.add_argument("--patience", type=int, default=3, help="early-stopping patience (epochs)")
    t.add_argument("--shuffle", action="store_true",
                   help="reshuffle the training rows every epoch (the paper's code does not)")
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    t.add_argument("--seed", type=int, default=0,
                   help="seeds initialisation and dropout (the split always uses --split-seed)")
    t.add_argument("--split-seed", type=int, default=0, help="seed of the 8/1/1 split")
    t.add_argument("--out", default=None,
                   help="output directory (default runs/<model>-<mode>x<scale>-<data>-seed<seed>)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch")
    t.add_argument("--track-ia", action="store_true",
                   help="record each field's information abundance after every epoch")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _key_values(pairs: list[str], flag: str) -> dict:
    """KEY=VALUE strings -> dict; values are Python literals where they parse as one."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"fastme train: {flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value  # a plain string such as field_pairs=upper
    return options


def _data_options(args) -> dict:
    kind = args.data.split(":", 1)[0]
    options = _key_values(args.data_option, "--data-option")
    if args.synthetic_samples is not None:
        if kind != "synthetic":
            raise SystemExit("fastme train: --synthetic-samples only applies to --data synthetic")
        options["num_samples"] = args.synthetic_samples
    if args.min_count is not None:
        if kind not in ("criteo", "avazu"):
            raise SystemExit("fastme train: --min-count only applies to criteo:/avazu: data")
        options["min_count"] = args.min_count
    if args.avazu_hour is not None:
        if kind != "avazu":
            raise SystemExit("fastme train: --avazu-hour only applies to avazu: data")
        options["hour"] = args.avazu_hour
    if args.rebuild_cache:
        options["rebuild"] = True
    if kind in ("criteo", "avazu"):
        options["progress"] = not args.no_progress
    return options


def default_out_dir(args) -> str:
    kind = args.data.split(":", 1)[0]
    if kind == "synthetic" and args.synthetic_samples:
        kind += str(args.synthetic_samples)
    name = f"{args.model.lower()}-{args.mode}x{args.scale}-{kind}-seed{args.seed}"
    return "runs/" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def run(args) -> int:
    import torch

    from fastme.data import load_dataset
    from fastme.models import build
    from fastme.train.trainer import TrainConfig, print_summary, resolve_device, train

    try:
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, patience=args.patience,
            device=str(resolve_device(args.device)), seed=args.seed, split_seed=args.split_seed,
            shuffle=args.shuffle, out_dir=args.out or default_out_dir(args), resume=args.resume,
            track_ia=args.track_ia, progress=not args.no_progress)
        started = time.perf_counter()
        data = load_dataset(args.data, cache_dir=args.cache_dir, **_data_options(args))
        print(f"data: {data!r} (loaded in {time.perf_counter() - started:.1f} s)", flush=True)
        torch.manual_seed(args.seed)  # the model's initialisation
        model = build(args.model, data.field_dims, args.scale, multi=args.mode == "me",
                      backend=args.backend, **_key_values(args.model_option, "--model-option"))
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"fastme train: error: {exc}", file=sys.stderr)
        return 2
    title = (f"{args.model} {args.mode.upper()} x{args.scale} on {args.data} "
             f"(backend {args.backend}, seed {args.seed})")
    print(f"model: {title}: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    info = {"title": title, "model": args.model.lower(), "mode": args.mode, "scale": args.scale,
            "backend": args.backend, "data": args.data, "data_info": data.info,
            "model_options": _key_values(args.model_option, "--model-option"), "command": sys.argv}
    try:
        results = train(model, data, config, info=info)
    except ValueError as exc:  # resuming with other settings, a split without both classes, ...
        print(f"fastme train: error: {exc}", file=sys.stderr)
        return 2
    print_summary(results)
    return 0
