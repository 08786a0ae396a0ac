"""PNG figures of the analysis (matplotlib, Agg backend). Every ``plot_*`` function writes
``<path>.png`` and ``<path>.json`` (the plotted numbers) and returns the PNG path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fastme._atomic import replace_on_success, write_text
from fastme._json import json_default


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_json(path, data) -> Path:
    """Write ``data`` as indented JSON (NaN written as null)."""
    path = Path(path)
    text = json.dumps(_nan_to_none(data), indent=1, default=json_default)
    write_text(path, text + "\n", make_parents=True)
    return path


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def _finish(fig, path, data) -> Path:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix == ".png" else path
    png = stem.with_suffix(".png")
    try:
        with replace_on_success(png, make_parents=True) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        _plt().close(fig)
    save_json(stem.with_suffix(".json"), data)
    return png


def _cardinality_order(field_dims, n: int) -> np.ndarray:
    """The fields by increasing cardinality (stable), or as given without ``field_dims``."""
    return np.argsort(field_dims, kind="stable") if field_dims is not None else np.arange(n)


def plot_toy(result: dict, path) -> Path:
    """IA(E1) over training for each D3 (Figure 4), mean +- std over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(layout="constrained", figsize=(6.4, 4.2))
    k = result["config"]["embed_dim"]
    for d3, run in result["runs"].items():
        it = np.asarray(run["iterations"])
        mean, std = np.asarray(run["mean"]), np.asarray(run["std"])
        kind = "small" if int(d3) < k else "large"
        (line,) = ax.plot(it, mean, label=f"D3 = {d3} ({kind})")
        if len(run["ia"]) > 1:
            ax.fill_between(it, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(
        xlabel="iteration",
        ylabel="IA(E1)",
        title=f"Toy experiment: IA of E1 (K = {k}, "
        f"mean ± std over {len(result['config']['seeds'])} seeds)",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    return _finish(fig, path, result)


def plot_field_ia(
    series: dict,
    field_names,
    path,
    title: str,
    field_dims=None,
    errors: dict | None = None,
    ylabel: str = "information abundance",
    baseline: float | None = None,
) -> Path:
    """Grouped bars of per-field IA, one bar group per field (Figures 2 and 8b). ``series`` maps a
    label to N values; ``errors`` optionally the same labels to N standard deviations. With
    ``field_dims`` the fields are sorted by cardinality, as in the paper; ``baseline`` draws a
    horizontal reference line (e.g. 1 for IA relative to random)."""
    plt = _plt()
    names = list(field_names)
    order = _cardinality_order(field_dims, len(names))
    n, s = len(names), len(series)
    fig, ax = plt.subplots(
        layout="constrained", figsize=(min(16.0, max(6.4, 0.2 * n * max(s, 1) + 2)), 4.5)
    )
    width = 0.8 / max(s, 1)
    x = np.arange(n)
    for idx, (label, values) in enumerate(series.items()):
        v = np.asarray(values, dtype=float)[order]
        err = None if not errors or label not in errors else np.asarray(errors[label], float)[order]
        ax.bar(x + (idx - (s - 1) / 2) * width, v, width, yerr=err, label=label, capsize=2)
    if baseline is not None:
        ax.axhline(baseline, color="0.3", lw=1, ls=":")
    ax.set_xticks(
        x,
        [names[i] + (f" ({field_dims[i]})" if field_dims is not None else "") for i in order],
        rotation=90,
        fontsize=7,
    )
    ax.set(
        xlabel="field" + (" (sorted by cardinality)" if field_dims is not None else ""),
        ylabel=ylabel,
        title=title,
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    data = {
        "title": title,
        "field_names": names,
        "field_dims": field_dims,
        "series": series,
        "errors": errors,
    }
    return _finish(fig, path, data)


def plot_spectra(
    spectra, field_names, path, title: str, field_dims=None, labelled: int = 5
) -> Path:
    """Normalised singular values of every field (Figure 1b), log scale. Fields are coloured by
    their rank in cardinality order (``field_dims``; without it, the given order), dark = fewest
    values, and ``labelled`` of them, spread evenly over that order, are named in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(layout="constrained", figsize=(6.8, 4.2))
    cmap = plt.get_cmap("viridis")
    names = list(field_names)
    n = len(spectra)
    order = _cardinality_order(field_dims, n)
    named = set(np.unique(np.rint(np.linspace(0, n - 1, min(labelled, n))).astype(int)).tolist())
    for rank, i in enumerate(order):
        sv = np.asarray(spectra[i], dtype=float)
        if not sv.size:
            continue
        label = None
        if rank in named:
            label = names[i] + (f" (D = {field_dims[i]})" if field_dims is not None else "")
        ax.plot(
            np.arange(1, sv.size + 1),
            np.maximum(sv, 1e-12),
            color=cmap(rank / max(n - 1, 1)),
            lw=2.0 if label else 0.8,
            alpha=1.0 if label else 0.6,
            label=label,
            zorder=3 if label else 2,
        )
    ax.set(
        yscale="log", xlabel="singular value index", ylabel="singular value / largest", title=title
    )
    ax.legend(fontsize=7, title="labelled fields", title_fontsize=7)
    if n > 1:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, n - 1))
        by = "cardinality" if field_dims is not None else "field order"
        first = "fewest values" if field_dims is not None else "first"
        fig.colorbar(sm, ax=ax, label=f"field rank by {by} (0 = {first})")
    ax.grid(alpha=0.3)
    data = {
        "title": title,
        "field_names": names,
        "field_dims": list(field_dims) if field_dims is not None else None,
        "colour_order": [names[i] for i in order],
        "spectra": [np.asarray(s, dtype=float).tolist() for s in spectra],
    }
    return _finish(fig, path, data)


def plot_sub_embedding(analysis: dict, field_names, path, title: str, random_ia=None) -> Path:
    """Figure 3 / 9: the sub-embedding IA heatmap with fields sorted by IA(E), and the sums over
    the target j and the source i with their correlation to the raw IA. Fields are named; the sums
    start at 0 and, given ``random_ia`` (per source field, E[IA] of its sub-embedding in an
    untrained model), show what an untrained model's sums would be, so seed noise does not read
    as a trend."""
    plt = _plt()
    mat = np.asarray(analysis["ia_matrix"], dtype=float)
    raw = np.asarray(analysis["raw_ia"], dtype=float)
    order = np.argsort(raw, kind="stable")
    names = [list(field_names)[i] for i in order]
    m = mat[np.ix_(order, order)]
    fig, axes = plt.subplots(
        1, 3, layout="constrained", figsize=(15, 4.8), gridspec_kw={"width_ratios": [1.2, 1, 1]}
    )
    im = axes[0].imshow(m.T, origin="lower", cmap="viridis", aspect="auto")
    # under the heatmap: a colorbar on its right puts its label against the next panel's y label
    fig.colorbar(im, ax=axes[0], location="bottom", shrink=0.8, label="IA(E_i→j)")
    source, target = "source field i (sorted by IA(E_i))", "target field j (sorted by IA(E_j))"
    axes[0].set(xlabel=source, ylabel=target, title="IA of sub-embeddings")
    x = np.arange(len(order))
    size = 7 if len(x) <= 20 else 5
    axes[0].set_xticks(x, names, rotation=90, fontsize=size)
    axes[0].set_yticks(x, names, fontsize=size)
    axes[1].plot(x, m.sum(1), marker="o", ms=3, label="Σ_j IA(E_i→j)")
    axes[1].set(
        xlabel=source,
        ylabel="sum over j",
        title=f"sum over targets (corr. with IA(E_i): {analysis['source_pearson']:.2f})",
    )
    axes[2].plot(x, m.sum(0), marker="o", ms=3, color="C1", label="Σ_i IA(E_i→j)")
    axes[2].set(
        xlabel=target,
        ylabel="sum over i",
        title=f"sum over sources (corr. with IA(E_j): {analysis['target_pearson']:.2f})",
    )
    top = max(np.nanmax(m.sum(1)), np.nanmax(m.sum(0)))
    if random_ia is not None:
        rnd = np.asarray(random_ia, dtype=float)[order]
        label = "untrained model (random table and cross weights)"
        axes[1].plot(x, len(x) * rnd, color="0.4", ls=":", label=label)
        axes[2].axhline(np.nansum(rnd), color="0.4", ls=":", label=label)
        top = max(top, len(x) * np.nanmax(rnd), np.nansum(rnd))
    for ax in axes[1:]:
        ax.set_xticks(x, names, rotation=90, fontsize=size)
        # from 0: the spread of the sums is read against their size, not blown up to fill the axis
        ax.set_ylim(0, 1.1 * top)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    data = dict(
        analysis,
        title=title,
        field_names=list(field_names),
        sorted_field_order=order.tolist(),
        random_ia=None if random_ia is None else list(random_ia),
    )
    return _finish(fig, path, data)


def plot_interaction_pattern(pattern, field_names, path, title: str, max_sets: int = 10) -> Path:
    """||W_{i->j}^(m)||_F per set (Figure 10b): one heatmap per set on a shared colour scale."""
    plt = _plt()
    p = np.asarray(pattern, dtype=float)
    shown = min(p.shape[0], max_sets)
    cols = min(shown, 5)
    rows = math.ceil(shown / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(max(6.5, 3.4 * cols + 1), 3.2 * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    # one colour scale for all sets, spanning the data, so set-to-set differences show
    vmin, vmax = (float(p[:shown].min()), float(p[:shown].max())) if p.size else (0.0, 1.0)
    im = None
    for idx, ax in enumerate(axes.flat):
        if idx >= shown:
            ax.axis("off")
            continue
        im = ax.imshow(p[idx].T, origin="lower", cmap="magma", vmin=vmin, vmax=vmax)
        ax.set(title=f"set {idx}", xlabel="source field i", ylabel="target field j")
        ticks = np.arange(p.shape[1])
        size = 7 if len(ticks) <= 20 else 4
        ax.set_xticks(ticks, list(field_names), rotation=90, fontsize=size)
        ax.set_yticks(ticks, list(field_names), fontsize=size)
    fig.colorbar(im, ax=axes, label="||W_i→j||_F")
    fig.suptitle(title)
    data = {
        "title": title,
        "field_names": list(field_names),
        "pattern": p.tolist(),
        "index": "[set][source i][target j]",
    }
    return _finish(fig, path, data)


def plot_bars(
    values: dict,
    path,
    title: str,
    ylabel: str,
    errors: dict | None = None,
    ylim: tuple | None = None,
) -> Path:
    """One bar per label (e.g. the diversity of ME, SE split and random, Figure 10a); ``ylim``
    fixes the value axis (e.g. a measure's whole range)."""
    plt = _plt()
    fig, ax = plt.subplots(layout="constrained", figsize=(max(6.4, 1.3 * len(values) + 1.5), 4.2))
    labels = list(values)
    err = [errors.get(k, 0.0) for k in labels] if errors else None
    bars = ax.bar(
        labels,
        [values[k] for k in labels],
        yerr=err,
        capsize=3,
        color=[f"C{i}" for i in range(len(labels))],
    )
    ax.bar_label(bars, fmt="%.3f")
    ax.set(ylabel=ylabel, title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, path, {"title": title, "values": values, "errors": errors})


_MODE_STYLE = {
    "se": dict(color="C0", marker="s", ls="--", mfc="white", ms=7),
    "me": dict(color="C1", marker="o", ls="-", ms=5),
}


def _plot_scale_metric(
    summary: dict,
    path,
    title: str,
    metric: str,
    ylabel: str,
    labels: dict,
    baseline: float | None = None,
    baseline_label: str | None = None,
) -> Path:
    """``metric`` (mean +- std over seeds) vs model scale, one line per mode in ``labels``."""
    plt = _plt()
    scales = summary["scales"]
    fig, ax = plt.subplots(layout="constrained", figsize=(6.0, 4.2))
    x = np.arange(len(scales))
    for idx, (mode, label) in enumerate(labels.items()):
        mean = np.array([summary[mode][str(s)][f"{metric}_mean"] for s in scales], dtype=float)
        std = np.array([summary[mode][str(s)][f"{metric}_std"] for s in scales], dtype=float)
        # distinct marker and line style, and a small sideways offset, so a line that coincides
        # with the other (always at the shared base point) stays visible
        offset = (idx - (len(labels) - 1) / 2) * 0.06
        ax.errorbar(x + offset, mean, yerr=std, capsize=3, label=label, **_MODE_STYLE[mode])
    if baseline is not None:
        ax.axhline(baseline, color="0.4", lw=1, ls=":", label=baseline_label)
    ax.set_xticks(x, ["base" if s == 1 else f"{s}x" for s in scales])
    ax.set(xlabel="model size (embedding scale)", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _finish(fig, path, summary)


def plot_scale_auc(summary: dict, path, title: str) -> Path:
    """Test AUC vs model scale, SE and ME (Figure 8a), mean +- std over seeds."""
    return _plot_scale_metric(
        summary,
        path,
        title,
        "test_auc",
        "test AUC",
        {"se": "single-embedding (SE)", "me": "multi-embedding (ME)"},
    )


def plot_scale_ia(summary: dict, path, title: str) -> Path:
    """Per-field IA normalised by its random baseline (IA / E[IA(randn_like(E))], Appendix I),
    averaged over fields, vs model scale for SE and ME, mean +- std over seeds (Figure 8b)."""
    return _plot_scale_metric(
        summary,
        path,
        title,
        "mean_field_ia_over_random",
        "mean over fields of IA / IA(random)",
        {"se": "SE", "me": "ME (sets concatenated)"},
        baseline=1.0,
        baseline_label="random N(0, 1)",
    )
