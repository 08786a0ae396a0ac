"""``fastme analyze``: every collapse measurement of one trained model, as JSON and PNG figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fastme.analysis import collapse
from fastme.analysis.plots import (plot_bars, plot_field_ia, plot_interaction_pattern,
                                   plot_spectra, plot_sub_embedding, save_json)

CHECKPOINT_NAMES = ("best.pt", "last.pt")


def _find_checkpoint(path) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no {' or '.join(CHECKPOINT_NAMES)} in directory {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _field_meta(ckpt: dict, path: Path) -> tuple[list[int] | None, list[str] | None]:
    """Field cardinalities and names stored with a checkpoint or next to it (the trainer's
    results.json / last.pt); (None, None) when nothing says."""
    for source in (ckpt.get("data"), ckpt.get("config"), ckpt.get("info")):
        if isinstance(source, dict) and source.get("field_dims"):
            return [int(d) for d in source["field_dims"]], source.get("field_names")
    results = path.parent / "results.json"
    if results.is_file():
        meta = json.loads(results.read_text())
        dims = (meta.get("data") or {}).get("field_dims")
        if dims:
            return [int(d) for d in dims], meta.get("field_names")
    last = path.parent / "last.pt"
    if last.is_file() and last != path:
        other = torch.load(last, map_location="cpu", weights_only=True)
        dims = (other.get("data") or {}).get("field_dims")
        if dims:
            return [int(d) for d in dims], None
    return None, None


def load_model(checkpoint, field_dims=None, model: str | None = None, mode: str | None = None,
               scale: int | None = None, model_options: dict | None = None):
    """Rebuild the model of a checkpoint written by ``fastme train`` (a file, or a run directory:
    its best.pt). Arguments given here override what the checkpoint records.

    Returns (model in eval mode on the CPU, metadata dict with model/mode/scale/field_dims/
    field_names/checkpoint).
    """
    from fastme.models import build

    path = _find_checkpoint(checkpoint)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a fastme checkpoint (no 'model' state dict)")
    info = ckpt.get("info") or {}
    config = ckpt.get("config") or {}
    saved_dims, names = _field_meta(ckpt, path)
    field_dims = list(field_dims) if field_dims is not None else saved_dims
    if field_dims is None:
        raise ValueError(f"{path} does not record the field cardinalities; pass the data the model "
                         "was trained on (--data)")
    name = model or info.get("model") or config.get("model")
    mode = mode or info.get("mode") or config.get("mode")
    scale = scale or info.get("scale") or config.get("scale")
    if not name or mode not in ("se", "me") or not scale:
        raise ValueError(f"{path} does not say which model it holds (model={name!r}, mode={mode!r},"
                         f" scale={scale!r}); pass --model, --mode and --scale")
    options = dict(info.get("model_options") or config.get("model_options") or {})
    options.update(model_options or {})
    options["backend"] = "reference"  # analysis never runs a kernel
    net = build(name, field_dims, int(scale), multi=mode == "me", **options)
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit {name} {mode} x{scale} with {len(field_dims)} "
                         f"fields: {exc}") from exc
    net.eval()
    meta = {"checkpoint": str(path), "model": name, "mode": mode, "scale": int(scale),
            "field_dims": field_dims, "model_options": options,
            "field_names": list(names) if names else [f"f{i}" for i in range(len(field_dims))]}
    return net, meta


def analyze_model(model, out_dir, field_names=None, seen_rows=None, split: int | None = None,
                  layer: int = 0, random_samples: int = 16, title: str = "") -> dict:
    """Measure collapse in ``model`` and write ``analysis.json`` and the figures to ``out_dir``.

    Per-field IA (sets concatenated, and per set), normalised IA (Appendix I), spectra, embedding
    diversity (ME: between its sets; SE: between ``split`` chunks of the embedding, default
    chunks of the base size), the random diversity baseline and, for DCNv2, the sub-embedding IA
    with its correlations and the interaction pattern.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ff = collapse.FieldFactors(model, seen_rows)  # one pass over the tables serves everything
    n, num_sets, k = len(ff), ff.num_sets, ff.embed_dim
    names = list(field_names) if field_names else [f"f{i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"field_names has {len(names)} names for {n} fields")
    dims = ff.rows
    prefix = f"{title}: " if title else ""
    result = {"title": title, "num_fields": n, "num_sets": num_sets, "embed_dim": k,
              "field_names": names, "rows_analysed": dims, "seen_only": seen_rows is not None,
              "figures": {}}

    width = num_sets * k
    ia = collapse.field_information_abundance(ff)
    random_ia = collapse.random_information_abundance(dims, width, random_samples)
    result["field_ia"] = ia
    result["field_ia_per_set"] = collapse.field_information_abundance(ff, per_set=True)
    result["field_ia_over_width"] = [v / width for v in ia]
    result["field_ia_random"] = random_ia
    result["field_ia_over_random"] = [v / r for v, r in zip(ia, random_ia)]
    result["mean_field_ia"] = float(np.nanmean(ia))
    result["figures"]["field_ia"] = str(plot_field_ia(
        {"learned": ia, "random N(0,1)": random_ia}, names, out / "field_ia",
        f"{prefix}information abundance per field", field_dims=dims))
    result["figures"]["spectra"] = str(plot_spectra(
        collapse.field_spectra(ff), names, out / "spectra",
        f"{prefix}normalised singular values per field"))

    # diversity: the model's own sets, or chunks of an SE embedding (default: of the base size)
    if split is None and num_sets == 1:
        base = getattr(model, "base_embed_dim", None) or k
        split = k // base if k % base == 0 and k // base >= 2 else None
    sets_m = num_sets if num_sets > 1 else split
    if sets_m:
        label = "ME sets" if num_sets > 1 else f"SE split into {split}"
        div = collapse.model_diversity(ff, split=None if num_sets > 1 else split)
        rnd = collapse.random_diversity(dims, sets_m, width // sets_m)
        result["diversity"] = {"label": label, "num_sets": sets_m, **div,
                               "random_per_field": rnd["per_field"], "random_mean": rnd["mean"]}
        result["figures"]["diversity"] = str(plot_bars(
            {label: div["mean"], "random": rnd["mean"]}, out / "diversity",
            f"{prefix}embedding-set diversity (mean over fields)", "diversity"))
    else:
        result["diversity"] = None

    if hasattr(model, "cross_weights"):
        sub = collapse.sub_embedding_analysis(model, layer=layer, factors=ff)
        result["sub_embedding"] = sub
        result["figures"]["sub_embedding"] = str(plot_sub_embedding(
            sub["overall"], names, out / "sub_embedding_ia",
            f"{prefix}DCNv2 sub-embedding IA (cross layer {layer}"
            + (", sets concatenated)" if num_sets > 1 else ")")))
        pattern = collapse.interaction_pattern(model, layer)
        result["interaction_pattern"] = pattern.tolist()
        result["figures"]["interaction_pattern"] = str(plot_interaction_pattern(
            pattern, names, out / "interaction_pattern",
            f"{prefix}interaction pattern ||W_i→j||_F (cross layer {layer})"))
    save_json(out / "analysis.json", result)
    return result
