"""Checkpoints and run identity, written once: save, read and find a checkpoint, rebuild its
trained model, and tell whether a run directory holds the same run (for training, the scaling
sweep, ``fastme analyze``, ``predict`` and ``export`` alike)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from fastme._atomic import replace_on_success
from fastme.models.spec import ModelSpec
from fastme.train.config import trajectory

LAST, BEST, RESULTS = "last.pt", "best.pt", "results.json"
LOCK = ".lock"  # held by the run training into the directory
CHECKPOINT_NAMES = (BEST, LAST)  # what a run directory's model is read from, in this order
SPEC_KEY = "spec"  # of the model spec in a checkpoint (and in results.json)


class CheckpointError(ValueError):
    """A file that should be a fastme checkpoint cannot be read as one."""


def save(obj: dict, path) -> None:
    """Write a checkpoint dict; a crash mid-write never leaves a truncated file."""
    import torch

    with replace_on_success(Path(path)) as tmp:
        torch.save(obj, tmp)


def read_checkpoint(path, device="cpu", hint: str | None = None) -> dict:
    """The dict of a checkpoint file written by fastme (model state dict, spec, data, ...).

    Raises :class:`CheckpointError` naming the file when it is empty, truncated or not a fastme
    checkpoint, in one line of our own: torch's messages for such files advise loading with
    ``weights_only=False`` (which would run code from the file) and filing an issue. ``hint`` is
    appended as the caller's advice. A missing file raises FileNotFoundError.
    """
    import pickle
    import warnings

    import torch

    path = Path(path)
    end = f"; {hint}" if hint else ""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4 ... file an issue"
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        if path.is_file() and path.stat().st_size == 0:
            what = "the file is empty"
        elif isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            what = "it holds Python objects that a fastme checkpoint never contains"
        else:
            what = f"truncated, damaged or another kind of file: {type(exc).__name__}"
        raise CheckpointError(f"{path} is not a readable fastme checkpoint ({what}){end}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} is not a fastme checkpoint (no 'model' state dict){end}")
    return ckpt


def load_checkpoint(path, device="cpu") -> dict:
    """A checkpoint written by the trainer, read to resume or test (:func:`read_checkpoint`)."""
    return read_checkpoint(path, device, hint="delete it to start afresh")


def find_checkpoint(path) -> Path:
    """A checkpoint file, or a run directory's best.pt (else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no {' or '.join(CHECKPOINT_NAMES)} in directory {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_trained(
    checkpoint,
    backend: str = "reference",
    device="cpu",
    overrides: dict | None = None,
    hint: str = "rebuild the model yourself and load ckpt['model']",
):
    """Rebuild the trained model of a checkpoint (a file, or a run directory: its best.pt, else
    last.pt) from the :class:`ModelSpec` it carries; returns (model in eval mode on ``device``,
    the checkpoint dict). ``overrides``: spec fields (name, mode, scale, field_dims; ``options``
    are merged; None is ignored) that replace the recorded ones or stand in for a missing spec.
    """
    path = find_checkpoint(checkpoint)
    ckpt = read_checkpoint(path, device, hint="point to a run's best.pt or last.pt")
    saved = ckpt.get(SPEC_KEY)
    if overrides:
        saved = dict(saved or {})
        saved.update({k: v for k, v in overrides.items() if v is not None and k != "options"})
        saved["options"] = {**(saved.get("options") or {}), **(overrides.get("options") or {})}
    try:
        spec = ModelSpec.from_dict(saved)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{path} carries no model spec or an incomplete one ({exc}); it was "
            f"written by an older fastme: retrain, or {hint}"
        ) from exc
    model = spec.build(backend)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit its spec {spec}: {exc}") from exc
    return model.to(device).eval(), ckpt


# ---- run identity -------------------------------------------------------------------------------


def run_identity(
    model: str,
    mode: str,
    scale: int,
    model_options: dict,
    data: str,
    data_options: dict,
    config: dict,
) -> dict:
    """What makes two runs the same run: exactly what a resume may not change. The model, the
    data (a file by its absolute path) and the settings of the optimisation trajectory
    (:func:`fastme.train.config.trajectory` of ``config``); the epoch budget, the patience, the
    device and the backend are not part of it, so that ``--resume`` with a larger ``--epochs``
    finds the run."""
    kind, _, where = data.partition(":")
    data = f"{kind}:{Path(where).expanduser().resolve()}" if where else kind
    return _as_json(
        {
            "model": model,
            "mode": mode,
            "scale": scale,
            "model_options": model_options,
            "data": data,
            "data_options": {
                k: v for k, v in data_options.items() if k not in ("progress", "rebuild")
            },
            "config": trajectory(config),
        }
    )


def default_out_dir(identity: dict) -> str:
    """runs/<model>-<mode>x<scale>-<data>-seed<seed>-<hash>: the hash is of the run's identity, so
    that runs that differ in any of it never share a directory, while the same command finds its
    own run again (for --resume)."""
    kind = identity["data"].split(":", 1)[0]
    if kind == "synthetic" and identity["data_options"].get("num_samples"):
        kind += str(identity["data_options"]["num_samples"])
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode())
    name = (
        f"{identity['model']}-{identity['mode']}x{identity['scale']}-{kind}-"
        f"seed{identity['config'].get('seed', 0)}-{digest.hexdigest()[:8]}"
    )
    return "runs/" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def saved_identity(out) -> dict | None:
    """The identity recorded by the run in ``out`` (None: no run; {}: none or unreadable)."""
    out = Path(out)
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


def finished_run(out, identity: dict) -> dict | None:
    """Before a fresh run into ``out`` (neither --resume nor --overwrite): the results of this
    very run when ``out`` already holds it finished, so that the same command reports them
    instead of training again (None: train).

    Another run's files are never replaced silently, nor an interrupted try of this one (last.pt
    without results.json): ValueError says to choose another --out, --resume or --overwrite."""
    out = Path(out)
    saved = saved_identity(out)
    if saved is None:
        return None
    if saved != _as_json(identity):
        differs = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise ValueError(
            f"{out} holds another run (it differs in "
            f"{', '.join(differs) or 'settings'}); choose another --out, add --resume "
            f"to continue that run or --overwrite to replace it"
        )
    if not (out / RESULTS).is_file():
        raise ValueError(
            f"{out} holds an interrupted try of this run ({LAST}); add --resume to "
            f"continue it or --overwrite to start it again"
        )
    try:
        results = json.loads((out / RESULTS).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{out / RESULTS} cannot be read ({exc}); add --overwrite to train this run again"
        ) from exc
    results["results_path"] = str(out / RESULTS)
    return results


def _as_json(value):
    return json.loads(json.dumps(value, default=str))
