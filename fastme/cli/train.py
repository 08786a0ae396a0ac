"""``fastme train``: train and evaluate an SE or ME model on synthetic, Criteo or Avazu data."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from fastme.cli.args import (
    DATA_ARGUMENTS,
    MODEL_ARGUMENTS,
    HelpFormatter,
    add_arguments,
    data_options,
    error,
    key_values,
)
from fastme.train.checkpoint import default_out_dir, finished_run, run_identity
from fastme.train.config import add_config_arguments, config_options


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train and evaluate a model (the paper's protocol)",
        description="Train an SE or ME model with the paper's protocol (8/1/1 split with seed 0, "
        "Adam, early stopping on validation AUC) and report the test AUC of the best "
        "epoch. Writes last.pt, best.pt and results.json to --out.",
        formatter_class=HelpFormatter,
    )
    add_arguments(p.add_argument_group("model"), MODEL_ARGUMENTS)
    add_arguments(p.add_argument_group("data"), DATA_ARGUMENTS)
    t = p.add_argument_group("training")
    add_config_arguments(
        t,
        (
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "table_optimizer",
            "table_lr",
            "patience",
            "shuffle",
            "precision",
            "device",
            "seed",
            "split_seed",
            "out_dir",
            "resume",
            "progress",
        ),
        out_dir="output directory (default runs/<model>-<mode>x<scale>-<data>-"
        "seed<seed>-<hash of the data and settings>)",
    )
    add_arguments(t, ("threads",))
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace another run's files in --out (otherwise refused)",
    )
    t.add_argument(
        "--track-ia",
        action="store_true",
        help="record each field's information abundance after every epoch",
    )
    p.set_defaults(func=run)


def identity_of(args, data_opts: dict, model_options: dict) -> dict:
    """The run identity (:func:`fastme.train.checkpoint.run_identity`) of a train command."""
    return run_identity(
        args.model, args.mode, args.scale, model_options, args.data, data_opts, config_options(args)
    )


def _field_ia(model, entry) -> dict:
    """The per-field information abundance, for the trainer's callbacks."""
    from fastme.analysis import field_information_abundance

    return {"field_ia": [float(v) for v in field_information_abundance(model)]}


def _report_finished(results: dict, args, ranks) -> int:
    """Say that the run is done and show its summary (rank 0 only), without training."""
    import torch

    from fastme.train import print_summary

    if ranks is None or ranks.is_main:
        done = results.get("config", {}).get("epochs")
        more = ""
        if done is not None and (args.epochs, args.patience) != (
            done,
            results["config"].get("patience"),
        ):
            more = (
                f" It was trained with --epochs {done} --patience "
                f"{results['config'].get('patience')}: add --resume to continue it with "
                f"--epochs {args.epochs} --patience {args.patience}."
            )
        print(
            f"fastme train: {Path(results['results_path']).parent} already holds this run, "
            f"finished: its results are shown, nothing was trained.{more} --overwrite trains "
            f"it again.",
            flush=True,
        )
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
    from fastme.train import TrainConfig, print_summary, train
    from fastme.train.trainer import check_backend, lock_run_dir, resolve_device

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
        data_opts = data_options(args)
        device = resolve_device(args.device)
        check_backend(args.backend, device, "--backend")  # before minutes of preprocessing
        # A model option mistake is found now, not after minutes of preprocessing.
        build(
            args.model,
            [2, 2],
            args.scale,
            multi=args.mode == "me",
            backend="reference",
            **model_options,
        )
        identity = identity_of(args, data_opts, model_options)
        out = Path(args.out_dir or default_out_dir(identity))
        config = TrainConfig(**{**config_options(args), "device": str(device), "out_dir": str(out)})
        lock = lock_run_dir(out) if ranks is None or ranks.is_main else contextlib.nullcontext()
        with lock:  # refuses a second run into --out before any data is loaded; held till the end
            finished = None if args.resume or args.overwrite else finished_run(out, identity)
            if finished is not None:
                return _report_finished(finished, args, ranks)
            started = time.perf_counter()
            with dp.main_rank_first(ranks):  # rank 0 builds a missing cache, the others read it
                data = load_dataset(args.data, cache_dir=args.cache_dir, **data_opts)
            say(f"data: {data!r} (loaded in {time.perf_counter() - started:.1f} s)", flush=True)
            torch.manual_seed(args.seed)  # the model's initialisation
            model = build(
                args.model,
                data.field_dims,
                args.scale,
                multi=args.mode == "me",
                backend=args.backend,
                **model_options,
            )
            title = (
                f"{args.model} {args.mode.upper()} x{args.scale} on {args.data} "
                f"(backend {args.backend}, seed {args.seed}"
                + ("" if args.precision == "fp32" else f", {args.precision}")
                + ")"
            )
            say(
                f"model: {title}: {sum(p.numel() for p in model.parameters()):,} parameters",
                flush=True,
            )
            info = {
                "title": title,
                "model": args.model,
                "mode": args.mode,
                "scale": args.scale,
                "backend": args.backend,
                "data": args.data,
                "data_info": data.info,
                "model_options": model_options,
                "identity": identity,
                "command": sys.argv,
            }
            callbacks = {"on_epoch": _field_ia if args.track_ia else None, "on_result": _field_ia}
            if ranks is None:
                results = train(model, data, config, info=info, lock=False, **callbacks)
            else:
                from fastme.distributed.trainer import train as train_data_parallel

                results = train_data_parallel(
                    model, data, config, ranks=ranks, info=info, lock=False, **callbacks
                )
    except KeyboardInterrupt:
        where = out / "last.pt" if out is not None else None
        hint = (
            f"; the last completed epoch is in {where}: run the same command with --resume "
            f"to continue"
            if where is not None and where.is_file()
            else ""
        )
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
