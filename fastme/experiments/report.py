"""``fastme analyze``: every collapse measurement of one trained model, as JSON and PNG figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastme.analysis import collapse, metrics
from fastme.analysis.plots import (
    plot_bars,
    plot_field_ia,
    plot_interaction_pattern,
    plot_spectra,
    plot_sub_embedding,
    save_json,
)
from fastme.train.checkpoint import find_checkpoint, load_trained

#: A measure within this relative distance of its random baseline, or within 3 standard
#: deviations of random draws of the same shapes where those spread wider (fields of a few rows),
#: counts as "as random": nothing has been learned that these measures can see.
RANDOM_TOLERANCE = 0.05

#: Random draws of the diversity baseline (its spread sets the verdict's band).
DIVERSITY_DRAWS = 24

#: A field whose IA is below this fraction of a random matrix's counts as collapsed: its embedding
#: uses fewer than half the directions an unlearned table of its shape has.
COLLAPSE_RATIO = 0.5


def load_model(
    checkpoint,
    field_dims=None,
    model: str | None = None,
    mode: str | None = None,
    scale: int | None = None,
    model_options: dict | None = None,
):
    """Rebuild the model of a checkpoint written by ``fastme train`` (a file, or a run directory:
    its best.pt) with :func:`fastme.train.checkpoint.load_trained`; arguments given here override
    the spec's fields (and stand in for it in a checkpoint that has none).

    Returns (model in eval mode on the CPU, metadata dict with model/mode/scale/field_dims/
    field_names/checkpoint).
    """
    path = find_checkpoint(checkpoint)
    overrides = {
        "name": model,
        "mode": mode,
        "scale": scale,
        "options": model_options,
        "field_dims": list(field_dims) if field_dims is not None else None,
    }
    # analysis never runs a kernel: the reference ops
    net, ckpt = load_trained(
        path, overrides=overrides, hint="pass --model, --mode, --scale and the training --data"
    )
    spec = net.spec
    names = (ckpt.get("data") or {}).get("field_names")
    if not names or len(names) != len(spec.field_dims):
        names = [f"f{i}" for i in range(len(spec.field_dims))]
    meta = {
        "checkpoint": str(path),
        "model": spec.name,
        "mode": spec.mode,
        "scale": spec.scale,
        "field_dims": list(spec.field_dims),
        "model_options": dict(spec.options),
        "field_names": list(names),
        "spec": spec.to_dict(),
        # what the run recorded about its data and settings (recorded_training_rows)
        "data": dict(ckpt.get("data") or {}),
        "info": dict(ckpt.get("info") or {}),
        "config": dict(ckpt.get("config") or {}),
    }
    return net, meta


def recorded_data_spec(meta: dict) -> tuple[str, dict]:
    """The dataset spec and options the run of a checkpoint (``meta`` from :func:`load_model`)
    trained on: its cache directory when it has one (raw and Parquet data; the cache holds the
    encoded rows exactly as trained on), else the spec and options the command recorded."""
    where = meta["checkpoint"]
    cache = ((meta.get("data") or {}).get("source") or {}).get("cache_dir")
    if cache:
        if not (Path(cache) / "meta.json").is_file():
            raise ValueError(
                f"the data cache {cache} recorded in {where} is gone; pass --data "
                f"(the data the model was trained on)"
            )
        return f"cache:{cache}", {}
    info = meta.get("info") or {}
    identity = info.get("identity") or {}  # fastme train; the scale experiment records info
    spec = identity.get("data") or info.get("data")
    if not isinstance(spec, str) or not spec:
        raise ValueError(
            f"{where} does not record its training data; pass --data (the data the "
            f"model was trained on)"
        )
    options = identity.get("data_options") if "data" in identity else info.get("data_options")
    return spec, dict(options or {})


def training_rows(meta: dict, data=None, split_seed: int | None = None):
    """The training split of the run that wrote a checkpoint, for ``--seen-only``.

    ``data``: a dataset to split instead of the one the checkpoint records
    (:func:`recorded_data_spec`). Either way it must have the fingerprint the run recorded, so
    the rows are the ones the model was trained on. ``split_seed``: default the run's.
    Returns (the training split, a description of where it came from).
    """
    where = meta["checkpoint"]
    if split_seed is None:
        split_seed = int((meta.get("config") or {}).get("split_seed", 0))
    if data is None:
        from fastme.data import load_dataset

        spec, options = recorded_data_spec(meta)
        try:
            data = load_dataset(spec, **options)
        except (ValueError, TypeError, OSError) as exc:
            raise ValueError(
                f"cannot reopen the training data recorded in {where} ({spec}): "
                f"{exc}; pass --data (the data the model was trained on)"
            ) from exc
        source = f"{spec} (recorded in the checkpoint)"
    else:
        source = "--data"
    recorded = (meta.get("data") or {}).get("fingerprint")
    if list(data.field_dims) != list(meta["field_dims"]) or (
        recorded is not None and data.fingerprint() != recorded
    ):
        raise ValueError(
            f"{source} is not the data {where} was trained on (its cardinalities or "
            f"rows differ: fingerprint {data.fingerprint()}, recorded {recorded}); "
            f"pass the training data as --data"
        )
    train = data.split(split_seed)[0]
    return train, f"{source}, training split (split seed {split_seed}, {len(train):,} rows)"


def analyze_model(
    model,
    out_dir,
    field_names=None,
    seen_rows=None,
    split: int | None = None,
    layer: int = 0,
    random_samples: int = 16,
    title: str = "",
) -> dict:
    """Measure collapse in ``model`` and write ``analysis.json`` and the figures to ``out_dir``.

    Per-field IA (sets concatenated, and per set), normalised IA (Appendix I), spectra, embedding
    diversity (ME: between its sets; SE: between ``split`` chunks of the embedding, default
    chunks of the base size), the random diversity baseline, for DCNv2 the sub-embedding IA
    with its correlations and the interaction pattern, and for the heterogeneous model the sets
    by expert kind (:func:`expert_analysis`).
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
    result = {
        "title": title,
        "num_fields": n,
        "num_sets": num_sets,
        "embed_dim": k,
        "field_names": names,
        "rows_analysed": dims,
        "seen_only": seen_rows is not None,
        "figures": {},
    }

    width = num_sets * k
    ia = collapse.field_information_abundance(ff)
    random_ia = collapse.random_information_abundance(dims, width, random_samples)
    result["field_ia"] = ia
    result["field_ia_per_set"] = collapse.field_information_abundance(ff, per_set=True)
    result["field_ia_over_width"] = [v / width for v in ia]
    result["field_ia_random"] = random_ia
    result["field_ia_random_std"] = [
        metrics.random_ia_stats(d, width, random_samples)[1] if d else float("nan") for d in dims
    ]
    result["field_ia_over_random"] = [v / r for v, r in zip(ia, random_ia)]
    result["mean_field_ia"] = float(np.nanmean(ia))
    result["mean_field_ia_over_random"] = float(np.nanmean(result["field_ia_over_random"]))
    result["figures"]["field_ia"] = str(
        plot_field_ia(
            {"learned": ia, "random N(0,1) of the same shape": random_ia},
            names,
            out / "field_ia",
            f"{prefix}information abundance per field",
            field_dims=dims,
        )
    )
    result["figures"]["spectra"] = str(
        plot_spectra(
            collapse.field_spectra(ff),
            names,
            out / "spectra",
            f"{prefix}normalised singular values per field",
            field_dims=dims,
        )
    )

    # diversity: the model's own sets, or chunks of an SE embedding (default: of the base size)
    base = getattr(model, "base_embed_dim", None) or k
    if split is None and num_sets == 1:
        split = k // base if k % base == 0 and k // base >= 2 else None
    sets_m = num_sets if num_sets > 1 else split
    if sets_m:
        if num_sets > 1:
            label = f"{num_sets} ME sets"
        else:
            label = f"SE split into {split}"
        div = collapse.model_diversity(ff, split=None if num_sets > 1 else split)
        draws = [
            collapse.random_diversity(dims, sets_m, width // sets_m, seed=seed)
            for seed in range(DIVERSITY_DRAWS)
        ]
        rnd_mean = float(np.mean([r["mean"] for r in draws]))
        result["diversity"] = {
            "label": label,
            "num_sets": sets_m,
            "set_width": width // sets_m,
            **div,
            "random_per_field": draws[0]["per_field"],
            "random_mean": rnd_mean,  # over the draws, like random_std
            "random_std": float(np.std([r["mean"] for r in draws])),
            "over_random": div["mean"] / rnd_mean,
        }
        random_label = f"random N(0,1), split into {sets_m} (± 1 sd of draws)"
        result["figures"]["diversity"] = str(
            plot_bars(
                {label: div["mean"], random_label: rnd_mean},
                out / "diversity",
                f"{prefix}embedding-set diversity (mean over fields)",
                "diversity (0 = same directions, 1 = orthogonal)",
                errors={random_label: result["diversity"]["random_std"]},
                ylim=(0.0, 1.0),
            )
        )
    else:
        result["diversity"] = None
        # said in the summary and in analysis.json rather than a figure with nothing to compare
        result["diversity_note"] = (
            f"not measured: an SE model of width K = {k} has a single embedding set"
            + (f" of the base size {base}" if k == base else "")
            + "; diversity compares sets (pass --split M to cut it into M chunks of K / M)"
        )

    if hasattr(model, "expert_sets"):
        result["experts"] = expert_analysis(model, ff, names)
        gate = result["experts"]["gate_average"]
        result["figures"]["gate"] = str(
            plot_bars(
                dict(zip(result["experts"]["kinds"], gate)),
                out / "gate",
                f"{prefix}gate weights, running mean over training batches",
                "weight",
                ylim=(0.0, 1.0),
            )
        )

    if hasattr(model, "cross_weights"):
        sub = collapse.sub_embedding_analysis(model, layer=layer, factors=ff)
        sub_random = collapse.random_sub_embedding_information_abundance(
            dims, num_sets, k, random_samples
        )
        sub["random_ia"] = sub_random
        sub["mean_over_random"] = float(
            np.nanmean(np.asarray(sub["overall"]["ia_matrix"]) / np.asarray(sub_random)[:, None])
        )
        result["sub_embedding"] = sub
        result["figures"]["sub_embedding"] = str(
            plot_sub_embedding(
                sub["overall"],
                names,
                out / "sub_embedding_ia",
                f"{prefix}DCNv2 sub-embedding IA (cross layer {layer}"
                + (", sets concatenated)" if num_sets > 1 else ")"),
                random_ia=sub_random,
            )
        )
        pattern = collapse.interaction_pattern(model, layer)
        result["interaction_pattern"] = pattern.tolist()
        result["figures"]["interaction_pattern"] = str(
            plot_interaction_pattern(
                pattern,
                names,
                out / "interaction_pattern",
                f"{prefix}interaction pattern ||W_i→j||_F (cross layer {layer})",
            )
        )
    result["verdict"] = verdict(result)
    save_json(out / "analysis.json", result)
    return result


def expert_analysis(model, factors, names) -> dict:
    """The heterogeneous model's sets by expert kind: IA per set and per kind (the kind's sets side
    by side), diversity within a kind vs between kinds, and the gate's average weights."""
    groups = model.expert_sets()
    per_set = np.asarray(collapse.field_information_abundance(factors, per_set=True), dtype=float)
    out = {
        "kinds": list(groups),
        "sets": groups,
        "gate": model.gate,
        "gate_average": [float(v) for v in model.gate_average],
        "mean_ia_per_set": np.nanmean(per_set, axis=0).tolist(),
    }
    if factors.num_sets == 1:  # SE: every expert reads the one set
        out["note"] = "one embedding set shared by every expert: no per-kind IA or diversity"
        return out
    per_kind = collapse.group_information_abundance(factors, groups)
    out["field_ia_per_kind"] = dict(zip(per_kind, map(list, per_kind.values())))
    out["mean_ia_per_kind"] = {k: float(np.nanmean(v)) for k, v in per_kind.items()}
    out["diversity"] = collapse.grouped_diversity(factors, groups)
    return out


def _fmt_fields(pairs, limit: int = 8) -> str:
    """'name value, ...' for (name, value) pairs, the first ``limit`` of them."""
    shown = ", ".join(f"{name} {v:.2f}" for name, v in pairs[:limit])
    return shown + (f", ... ({len(pairs)} in all)" if len(pairs) > limit else "")


def verdict(
    result: dict, tolerance: float = RANDOM_TOLERANCE, collapse_ratio: float = COLLAPSE_RATIO
) -> dict:
    """What the measurements of :func:`analyze_model` say, in one sentence.

    ``kind``: "collapsed" (some fields' IA below ``collapse_ratio`` x random), "random" (mean IA /
    random, and the diversity where measured, within the band of random tables: 3 standard
    deviations of random draws of the same shapes, at least ``tolerance`` of the baseline; the
    embeddings are then indistinguishable from an unlearned table, i.e. from their
    initialisation) or "learned" (moved away from random, no field collapsed).
    """
    ratio = np.asarray(result["field_ia_over_random"], dtype=float)
    names = result["field_names"]
    collapsed = sorted(
        ((n, r) for n, r in zip(names, ratio) if r < collapse_ratio), key=lambda p: p[1]
    )
    mean = result["mean_field_ia_over_random"]
    # spread of the mean over fields of IA / random for random tables (fields independent)
    rel_sd = np.asarray(result["field_ia_random_std"], dtype=float) / np.asarray(
        result["field_ia_random"], dtype=float
    )
    ok = np.isfinite(rel_sd)
    ia_band = max(tolerance, 3 * float(np.sqrt((rel_sd[ok] ** 2).sum())) / max(ok.sum(), 1))
    div = result.get("diversity")
    div_band = max(tolerance * div["random_mean"], 3 * div["random_std"]) if div else None
    as_random = abs(mean - 1) <= ia_band and (
        div is None or abs(div["mean"] - div["random_mean"]) <= div_band
    )
    what = f"mean IA / random {mean:.2f} (random tables: 1 ± {ia_band:.2f})"
    if div:
        what += (
            f", diversity {div['mean']:.3f} (random tables: {div['random_mean']:.3f} ± "
            f"{div_band:.3f})"
        )
    if collapsed:
        kind = "collapsed"
        text = (
            f"{len(collapsed)} of {len(names)} fields collapsed (IA below "
            f"{collapse_ratio:g} x random): {_fmt_fields(collapsed)}; over all fields, {what}"
        )
    elif as_random:
        kind = "random"
        text = (
            f"indistinguishable from random: {what}; the bands are 3 standard deviations of "
            f"random draws of these shapes, at least {tolerance:.0%}. The embeddings have "
            f"barely left their random initialisation, so these numbers show no collapse, "
            f"nor anything learned; train longer (more optimiser steps) before reading them"
        )
    else:
        kind = "learned"
        text = (
            f"moved away from random: {what}; no field below {collapse_ratio:g} x random "
            f"IA, so none collapsed"
        )
    return {
        "kind": kind,
        "text": text,
        "tolerance": tolerance,
        "ia_band": ia_band,
        "diversity_band": div_band,
        "collapse_ratio": collapse_ratio,
        "collapsed_fields": [n for n, _ in collapsed],
    }


def summary_lines(result: dict) -> list[str]:
    """The measurements of :func:`analyze_model` in words, as ``fastme analyze`` prints them."""
    names, ratio = result["field_names"], result["field_ia_over_random"]
    width, m = result["num_sets"] * result["embed_dim"], result["num_sets"]
    rows = "rows seen in the training split" if result["seen_only"] else "all rows"
    finite = sorted(((r, n) for n, r in zip(names, ratio) if np.isfinite(r)))
    lines = [
        (
            f"information abundance (IA: how many directions a field's embedding [D_i x {width}] "
            f"uses), {len(names)} fields, {rows}:"
        ),
        (
            f"  mean IA {result['mean_field_ia']:.3f} (K = {result['embed_dim']}, M = {m}); "
            f"relative to a random N(0,1) table of the same shape (IA / random; 1 = as abundant "
            f"as random, lower = collapsed): mean {result['mean_field_ia_over_random']:.3f}, "
            f"min {finite[0][0]:.3f} ({finite[0][1]}), max {finite[-1][0]:.3f} ({finite[-1][1]})"
        ),
        "  lowest IA / random: " + ", ".join(f"{n} {r:.2f}" for r, n in finite[:5]),
    ]
    if len(finite) < len(names):
        lines.append(
            f"  {len(names) - len(finite)} field(s) with no row analysed: "
            + ", ".join(n for n, r in zip(names, ratio) if not np.isfinite(r))
        )
    div = result.get("diversity")
    if div:
        what = (
            "between the model's sets"
            if m > 1
            else f"between {div['num_sets']} chunks of {div['set_width']} columns of its "
            f"embedding (the paper's SE baseline for an ME model of {div['num_sets']} sets)"
        )
        lines.append(
            f"diversity {what} (0 = same directions, 1 = orthogonal): {div['mean']:.3f}; "
            f"random N(0,1) tables split the same way: {div['random_mean']:.3f} "
            f"({div['over_random']:.2f} x random)"
        )
        if m > 1:
            lines.append(
                f"  SE-split baseline: analyse an SE x{m} checkpoint of this model "
                f"(fastme experiment scale trains one) and compare its diversity"
            )
    else:
        lines.append(f"diversity: {result.get('diversity_note', 'not measured')}")
    if "experts" in result:
        lines.extend(_expert_lines(result["experts"]))
    lines.append(f"verdict: {result['verdict']['text']}")
    if "sub_embedding" in result:
        s = result["sub_embedding"]
        lines.append(
            f"sub-embedding IA (DCNv2 cross layer {s['layer']}): mean "
            f"{s['mean_over_random']:.2f} x that of an untrained model; "
            f"corr(sum_i IA(E_i->j), IA(E_j)) = {s['overall']['target_pearson']:.3f} "
            f"overall, {s['mean_target_pearson']:.3f} mean over sets (the paper: 0.68 "
            f"SE, 0.52 ME on Criteo; high = a field's interactions inherit its collapse)"
        )
    return lines


def _expert_lines(ex: dict) -> list[str]:
    gate = ", ".join(f"{k} {w:.3f}" for k, w in zip(ex["kinds"], ex["gate_average"]))
    sets = ", ".join(f"{k} {v}" for k, v in ex["sets"].items())
    per_set = ", ".join(f"{v:.2f}" for v in ex["mean_ia_per_set"])
    lines = [
        f"experts (sets): {sets}; gate {ex['gate']}, average weights: {gate}",
        f"  mean IA per set: {per_set}",
    ]
    if "note" in ex:
        return lines + [f"  {ex['note']}"]
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in ex["mean_ia_per_kind"].items())
    div = ex["diversity"]
    lines.append(f"  mean IA per expert kind (its sets side by side): {kinds}")
    within = div["within_kind"]["mean"]
    lines.append(
        "  diversity between sets of the same kind "
        + (f"{within:.3f}" if np.isfinite(within) else "n/a (each kind has one set)")
        + f", of different kinds {div['between_kinds']['mean']:.3f}"
    )
    return lines
