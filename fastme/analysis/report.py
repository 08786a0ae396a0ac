"""``fastme analyze``: every collapse measurement of one trained model, as JSON and PNG figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastme.analysis import collapse
from fastme.analysis.plots import (plot_bars, plot_field_ia, plot_interaction_pattern,
                                   plot_spectra, plot_sub_embedding, save_json)


def load_model(checkpoint, field_dims=None, model: str | None = None, mode: str | None = None,
               scale: int | None = None, model_options: dict | None = None):
    """Rebuild the model of a checkpoint written by ``fastme train`` (a file, or a run directory:
    its best.pt) from the :class:`~fastme.models.ModelSpec` it carries. Arguments given here
    override the spec's fields (and stand in for it in a checkpoint that has none).

    Returns (model in eval mode on the CPU, metadata dict with model/mode/scale/field_dims/
    field_names/checkpoint).
    """
    from fastme.models.spec import CHECKPOINT_KEY, ModelSpec, find_checkpoint

    path = find_checkpoint(checkpoint)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable fastme checkpoint ({type(exc).__name__}: "
                         f"{exc})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a fastme checkpoint (no 'model' state dict)")
    saved = dict(ckpt.get(CHECKPOINT_KEY) or {})
    overrides = {"name": model, "mode": mode, "scale": scale,
                 "field_dims": list(field_dims) if field_dims is not None else None}
    saved.update({k: v for k, v in overrides.items() if v is not None})
    saved["options"] = {**(saved.get("options") or {}), **(model_options or {})}
    try:
        spec = ModelSpec.from_dict(saved)
    except ValueError as exc:
        raise ValueError(f"{path} carries no complete model spec ({exc}); pass --model, --mode, "
                         f"--scale and the training --data") from exc
    net = spec.build(backend="reference")  # analysis never runs a kernel
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit {spec}: {exc}") from exc
    net.eval()
    names = (ckpt.get("data") or {}).get("field_names")
    if not names or len(names) != len(spec.field_dims):
        names = [f"f{i}" for i in range(len(spec.field_dims))]
    meta = {"checkpoint": str(path), "model": spec.name, "mode": spec.mode, "scale": spec.scale,
            "field_dims": list(spec.field_dims), "model_options": dict(spec.options),
            "field_names": list(names), "spec": spec.to_dict()}
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
        f"{prefix}normalised singular values per field", field_dims=dims))

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
