"""``fastme train``: train and evaluate an SE or ME model on synthetic, Criteo or Avazu data."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
import time
from pathlib import Path

from fastme.cli import error, key_values
from fastme.models import MODELS
from fastme.ops import BACKENDS
from fastme.train.config import TRAJECTORY_FIELDS, add_config_arguments, config_options

DATA_HELP = ("synthetic (built in), criteo:PATH (raw Kaggle train.txt), avazu:PATH (raw Kaggle "
             "train CSV; --data-option header=none without its header line), csv:PATH (your own "
             "CSV with a header line; --data-option label=NAME, fields=a,b,c, integer=a), "
             "parquet:PATH (Parquet file, directory, glob or comma list), npy:DIR "
             "(encoded x.npy and y.npy) or cache:DIR (a preprocessed cache); raw, CSV and "
             "Parquet files are preprocessed once into a cache that later runs reuse "
             "(docs/data.md)")
MODEL_HELP = "backbone: " + ", ".join(MODELS)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_model_arguments(group) -> None:
    """--model, --mode, --scale, --backend and --model-option (shared with the analysis
    commands)."""
    group.add_argument("--model", default="dcnv2", type=str.lower, choices=list(MODELS),
                       help=MODEL_HELP)
    group.add_argument("--mode", choices=("se", "me"), default="se",
                       help="se: one embedding of size base*scale; me: scale embeddings of size "
                            "base")
    group.add_argument("--scale", type=positive_int, default=1,
                       help="model size multiplier (1, 2, 3, 4, 10)")
    group.add_argument("--backend", default="auto", choices=BACKENDS,
                       help="implementation of the fused ops")
    group.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                       help="extra model constructor argument, e.g. hidden_dim=64 (repeatable)")


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train and evaluate a model (the paper's protocol)",
        description="Train an SE or ME model with the paper's protocol (8/1/1 split with seed 0, "
                    "Adam, early stopping on validation AUC) and report the test AUC of the best "
                    "epoch. Writes last.pt, best.pt and results.json to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arguments(p.add_argument_group("model"))
    d = p.add_argument_group("data")
    d.add_argument("--data", default="synthetic", help=DATA_HELP)
    d.add_argument("--cache-dir", default=None,
                   help="where raw-file caches live (default $FASTME_CACHE_DIR or ~/.cache/fastme)")
    d.add_argument("--synthetic-samples", type=int, default=None,
                   help="rows of the synthetic data (default: the built-in size)")
    d.add_argument("--min-count", type=int, default=None,
                   help="raw data: values seen fewer times become the field's OOV index "
                        "(default 10 for Criteo, 2 for Avazu, 1 for CSV and Parquet; the reference "
                        "code uses 4 for Avazu)")
    d.add_argument("--avazu-hour", choices=("split", "raw"), default=None,
                   help="Avazu hour: split into hour-of-day and weekday (default) or the raw "
                        "YYMMDDHH value as one field (the reference code)")
    d.add_argument("--rebuild-cache", action="store_true", help="preprocess raw data again")
    d.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra load_dataset option, e.g. field_dims=[10,100,1000] or "
                        "interaction_scale=2.0 for synthetic data (repeatable)")
    t = p.add_argument_group("training")
    add_config_arguments(t, ("epochs", "batch_size", "lr", "weight_decay", "patience", "shuffle",
                             "device", "seed", "split_seed", "out_dir", "resume", "progress"),
                         out_dir="output directory (default runs/<model>-<mode>x<scale>-<data>-"
                                 "seed<seed>-<hash of the data and settings>)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace another run's files in --out (otherwise refused)")
    t.add_argument("--track-ia", action="store_true",
                   help="record each field's information abundance after every epoch")
    p.set_defaults(func=run)


def _data_options(args) -> dict:
    kind = args.data.split(":", 1)[0]
    options = key_values(args.data_option, "--data-option")
    if args.synthetic_samples is not None:
        if kind != "synthetic":
            raise ValueError("--synthetic-samples only applies to --data synthetic")
        options["num_samples"] = args.synthetic_samples
    if args.min_count is not None:
        if kind not in ("criteo", "avazu", "csv", "parquet"):
            raise ValueError("--min-count only applies to criteo:/avazu:/csv:/parquet: data")
        options["min_count"] = args.min_count
    if args.avazu_hour is not None:
        if kind != "avazu":
            raise ValueError("--avazu-hour only applies to avazu: data")
        options["hour"] = args.avazu_hour
    if args.rebuild_cache:
        options["rebuild"] = True
    if kind in ("criteo", "avazu", "csv", "parquet", "npy"):
        options["progress"] = args.progress
    return options


def run_identity(args, data_options: dict, model_options: dict) -> dict:
    """What makes two runs the same run: exactly what a resume may not change. The model, the
    data (a raw file by its absolute path) and the settings of the optimisation trajectory
    (``TRAJECTORY_FIELDS``); the epoch budget and the patience are not part of it, so that
    ``--resume`` with a larger ``--epochs`` or ``--patience`` finds the run again."""
    kind, _, where = args.data.partition(":")
    data = f"{kind}:{Path(where).expanduser().resolve()}" if where else kind
    config = {k: v for k, v in config_options(args).items() if k in TRAJECTORY_FIELDS}
    return {"model": args.model, "mode": args.mode, "scale": args.scale,
            "model_options": model_options, "data": data,
            "data_options": {k: v for k, v in data_options.items()
                             if k not in ("progress", "rebuild")},
            "config": config}


def default_out_dir(args, identity: dict) -> str:
    """runs/<model>-<mode>x<scale>-<data>-seed<seed>-<hash>: the hash is of the run's identity
    (data file, data and model options, training settings), so that runs that differ in any of them
    never share a directory, while the same command finds its own run again (for --resume)."""
    kind = args.data.split(":", 1)[0]
    if kind == "synthetic" and args.synthetic_samples:
        kind += str(args.synthetic_samples)
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode())
    name = f"{args.model}-{args.mode}x{args.scale}-{kind}-seed{args.seed}-{digest.hexdigest()[:8]}"
    return "runs/" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _saved_identity(out: Path) -> dict | None:
    """The identity recorded by the run in ``out`` (None: no run there)."""
    from fastme.train.trainer import LAST, RESULTS, load_checkpoint

    if (out / RESULTS).is_file():
        try:
            return json.loads((out / RESULTS).read_text())["info"].get("identity", {})
        except (OSError, ValueError, KeyError, AttributeError):
            return {}
    if (out / LAST).is_file():
        try:
            return load_checkpoint(out / LAST)["info"].get("identity", {})
        except (ValueError, KeyError, AttributeError):
            return {}
    return None


def _check_not_another_run(out: Path, identity: dict, args) -> None:
    """A fresh run replaces the files in ``out`` only when they are an earlier try of the same
    run; another run's results are never deleted silently."""
    if args.resume or args.overwrite:
        return
    saved = _saved_identity(out)
    if saved is None or saved == _as_json(identity):
        return
    differs = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    raise ValueError(f"{out} holds another run (it differs in {', '.join(differs) or 'settings'}); "
                     f"choose another --out, add --resume to continue that run or --overwrite to "
                     f"replace it")


def _finished_run(out: Path, identity: dict, args) -> dict | None:
    """The results of this very run when ``out`` already holds it finished: running the same
    command again reports them instead of training again (None: train).

    A try that was interrupted (last.pt without results.json) is never replaced silently either:
    ValueError says to add --resume or --overwrite."""
    from fastme.train.trainer import LAST, RESULTS

    if args.resume or args.overwrite or _saved_identity(out) != _as_json(identity):
        return None
    if not (out / RESULTS).is_file():
        if (out / LAST).is_file():
            raise ValueError(f"{out} holds an interrupted try of this run ({LAST}); add "
                             f"--resume to continue it or --overwrite to start it again")
        return None
    try:
        results = json.loads((out / RESULTS).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{out / RESULTS} cannot be read ({exc}); add --overwrite to train "
                         f"this run again") from exc
    results["results_path"] = str(out / RESULTS)
    return results


def _as_json(value):
    return json.loads(json.dumps(value, default=str))


def _field_ia(model, entry) -> dict:
    """The per-field information abundance, for the trainer's callbacks."""
    from fastme.analysis import field_information_abundance

    return {"field_ia": [float(v) for v in field_information_abundance(model)]}


def _report_finished(results: dict, args, ranks) -> int:
    """Say that the run is done and show its summary (rank 0 only), without training."""
    import torch

    from fastme.train.trainer import print_summary

    if ranks is None or ranks.is_main:
        done = results.get("config", {}).get("epochs")
        more = ""
        if done is not None and (args.epochs, args.patience) != (
                done, results["config"].get("patience")):
            more = (f" It was trained with --epochs {done} --patience "
                    f"{results['config'].get('patience')}: add --resume to continue it with "
                    f"--epochs {args.epochs} --patience {args.patience}.")
        print(f"fastme train: {Path(results['results_path']).parent} already holds this run, "
              f"finished: its results are shown, nothing was trained.{more} --overwrite trains "
              f"it again.", flush=True)
        print_summary(results)
    if ranks is not None:
        torch.distributed.destroy_process_group()
    return 0


def run(args) -> int:
    import torch

    from fastme._lock import LockedError
    from fastme.data import load_dataset
    from fastme.distributed import data_parallel as dp
    from fastme.models import build
    from fastme.ops import available_backends
    from fastme.train.trainer import TrainConfig, lock_run_dir, print_summary, resolve_device, train

    out = None
    # Under torchrun (WORLD_SIZE > 1) every rank runs this; rank 0 prints, locks --out and writes
    # the files (docs/distributed.md).
    ranks = None
    say = print
    try:
        if dp.launched_distributed():
            ranks = dp.init(args.device)
            say = print if ranks.is_main else (lambda *a, **k: None)
        model_options = key_values(args.model_option, "--model-option")
        data_options = _data_options(args)
        device = resolve_device(args.device)
        if args.backend != "auto" and args.backend not in available_backends(device):
            raise ValueError(f"--backend {args.backend} cannot run on {device} here (available: "
                             f"{', '.join(available_backends(device))}); use --backend auto"
                             + (" or --device cuda" if args.backend == "cuda" else ""))
        # A model option mistake is found now, not after minutes of preprocessing.
        build(args.model, [2, 2], args.scale, multi=args.mode == "me", backend="reference",
              **model_options)
        identity = run_identity(args, data_options, model_options)
        out = Path(args.out_dir or default_out_dir(args, identity))
        config = TrainConfig(**{**config_options(args), "device": str(device),
                                "out_dir": str(out)})
        lock = lock_run_dir(out) if ranks is None or ranks.is_main else contextlib.nullcontext()
        with lock:  # refuses a second run into --out before any data is loaded
            _check_not_another_run(out, identity, args)
            finished = _finished_run(out, identity, args)
            if finished is not None:
                return _report_finished(finished, args, ranks)
            started = time.perf_counter()
            with dp.main_rank_first(ranks):  # rank 0 builds a missing cache, the others read it
                data = load_dataset(args.data, cache_dir=args.cache_dir, **data_options)
            say(f"data: {data!r} (loaded in {time.perf_counter() - started:.1f} s)", flush=True)
            torch.manual_seed(args.seed)  # the model's initialisation
            model = build(args.model, data.field_dims, args.scale, multi=args.mode == "me",
                          backend=args.backend, **model_options)
            title = (f"{args.model} {args.mode.upper()} x{args.scale} on {args.data} "
                     f"(backend {args.backend}, seed {args.seed})")
            say(f"model: {title}: {sum(p.numel() for p in model.parameters()):,} parameters",
                flush=True)
            info = {"title": title, "model": args.model, "mode": args.mode, "scale": args.scale,
                    "backend": args.backend, "data": args.data, "data_info": data.info,
                    "model_options": model_options, "identity": identity,
                    "command": sys.argv}
            callbacks = {"on_epoch": _field_ia if args.track_ia else None,
                         "on_result": _field_ia}
            if ranks is None:
                results = train(model, data, config, info=info, **callbacks)
            else:
                from fastme.distributed.trainer import train as train_data_parallel

                results = train_data_parallel(model, data, config, ranks=ranks, info=info,
                                              **callbacks)
    except KeyboardInterrupt:
        where = out / "last.pt" if out is not None else None
        hint = (f"; the last completed epoch is in {where}: run the same command with --resume "
                f"to continue" if where is not None and where.is_file() else "")
        print(f"fastme train: interrupted{hint}", file=sys.stderr, flush=True)
        return 130
    except FloatingPointError as exc:
        return error("train", f"{exc} (for example --lr {args.lr / 10:g})")
    except (ValueError, TypeError, OSError, LockedError) as exc:
        # bad options or data, a resume that does not fit, a damaged file, a full disk, ...
        return error("train", exc)
    if ranks is None or ranks.is_main:
        print_summary(results)
    if ranks is not None:
        torch.distributed.destroy_process_group()
    return 0
