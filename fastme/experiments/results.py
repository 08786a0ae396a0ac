"""``fastme experiment results``: run the toy and the scaling experiment with their defaults and
write their tables and figures to ``docs/results.md`` (and ``docs/results/``).

Finished scaling runs are reused (see :mod:`fastme.experiments.scale`), so running it again after
an interruption only trains what is missing; ``--from-outputs`` only re-renders the page from the
experiments' JSON outputs.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from fastme._atomic import replace_on_success, write_text
from fastme._machine import cpu_description
from fastme.experiments.scale import PRESETS, conclusion

TOY_DIR = Path("runs/experiment-toy")
SCALE_DIR = Path(f"runs/experiment-scale-{PRESETS['cpu']['model']}-synthetic")
COMMAND = "fastme experiment results"


def _pm(mean, std, digits: int = 4) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _label(s) -> str:
    return "base" if int(s) == 1 else f"{s}x"


def scale_tables(summary: dict) -> list[str]:
    """Markdown tables of a ``scale.json``: per scale, and per field (IA / random)."""
    scales = [s for s in summary["scales"] if str(s) in summary["se"]]
    seeds = summary["config"]["seeds"]
    lines = [
        f"Mean ± std over seeds {seeds}. IA / random: each field's IA divided by the "
        "expected IA of a Gaussian matrix of the same shape (Appendix I), averaged over "
        "fields; 1 = as abundant as random. Diversity (Figure 10a): mean over fields and set "
        "pairs of 1 − the mean cosine of the principal angles between two sets' column spaces "
        "(ME: its sets; SE: its embedding cut into chunks of the base size), beside random "
        "tables split the same way.",
        "",
        "| scale | SE test AUC | ME test AUC | ME − SE | SE IA / random | ME IA / random "
        "| SE mean IA | ME mean IA | SE diversity | ME diversity | random diversity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in scales:
        se, me = summary["se"][str(s)], summary["me"].get(str(s))
        gap = f"{me['test_auc_mean'] - se['test_auc_mean']:+.4f}" if me and s != 1 else ""
        cells = [
            _label(s),
            _pm(se["test_auc_mean"], se["test_auc_std"]),
            _pm(me["test_auc_mean"], me["test_auc_std"]) if me else "-",
            gap,
            _pm(se["mean_field_ia_over_random_mean"], se["mean_field_ia_over_random_std"], 3),
            _pm(me["mean_field_ia_over_random_mean"], me["mean_field_ia_over_random_std"], 3)
            if me
            else "-",
            f"{se['mean_field_ia_mean']:.2f}",
            f"{me['mean_field_ia_mean']:.2f}" if me else "-",
            _pm(se["diversity_mean"], se["diversity_std"], 3) if "diversity_mean" in se else "",
            _pm(me["diversity_mean"], me["diversity_std"], 3)
            if me and s != 1 and "diversity_mean" in me
            else "",
            f"{se['diversity_random']:.3f}" if "diversity_random" in se else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Test AUC per seed:",
        "",
        "| run | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "| --- |" + " --- |" * len(seeds),
    ]
    for mode in ("se", "me"):
        for s in scales:
            if s == 1 and mode == "me":
                continue
            entry = summary[mode].get(str(s))
            if entry:
                by_seed = dict(zip(entry["seeds"], entry["test_auc"]))
                lines.append(
                    f"| {mode.upper()} {_label(s)} | "
                    + " | ".join(f"{by_seed[x]:.4f}" if x in by_seed else "-" for x in seeds)
                    + " |"
                )
    # per field, sorted by cardinality as in the paper's figures
    names, dims = summary["field_names"], summary["field_dims"]
    order = np.argsort(dims, kind="stable")
    cols = [("se", s) for s in scales] + [("me", s) for s in scales if s != 1]
    lines += [
        "",
        "IA / random per field (mean over seeds), fields sorted by cardinality "
        "(the dataset's, OOV row included):",
        "",
        "| field | D | " + " | ".join(f"{m.upper()} {_label(s)}" for m, s in cols) + " |",
        "| --- | --- |" + " --- |" * len(cols),
    ]
    for i in order:
        row = [summary[m][str(s)]["field_ia_over_random_mean"][i] for m, s in cols]
        lines.append(f"| {names[i]} | {dims[i]} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return lines


def toy_table(toy: dict) -> list[str]:
    cfg = toy["config"]
    lines = [
        f"K = {cfg['embed_dim']}, {cfg['iterations']} full-batch iterations, lr "
        f"{cfg['lr']}, seeds {cfg['seeds']}:",
        "",
        "| D3 | IA(E1) at start | IA(E1) at the end (mean ± std) | per seed |",
        "| --- | --- | --- | --- |",
    ]
    for d3, run in toy["runs"].items():
        per_seed = ", ".join(f"{r[-1]:.2f}" for r in run["ia"])
        lines.append(
            f"| {d3} | {run['mean'][0]:.2f} | "
            f"{_pm(run['final_ia_mean'], run['final_ia_std'], 2)} | {per_seed} |"
        )
    return lines


def render(scale: dict, toy: dict, timing: dict | None = None, machine: str | None = None) -> str:
    cfg = scale["config"]
    train = cfg["train_options"]
    lines = [
        "# Measured results",
        "",
        f"Written by `{COMMAND}` (which runs `fastme experiment toy` and "
        "`fastme experiment scale` with their defaults, then renders this page); do not "
        "edit by hand. How the data and the defaults were chosen, and the ablations behind "
        "them: [analysis.md](analysis.md#the-built-in-data-and-the-scaling-defaults).",
        "",
    ]
    if machine:
        lines += [f"Machine: {machine}.", ""]
    lines += [
        "## Scaling: SE vs ME (Figure 8)",
        "",
        f"`fastme experiment scale`: {cfg['model']}, scales {cfg['scales']}, seeds "
        f"{cfg['seeds']}, data `{cfg['data']}` ({cfg['num_rows']:,} rows, split 8/1/1), "
        f"batch {train.get('batch_size')}, lr {train.get('lr')}, weight decay "
        f"{train.get('weight_decay')}, at most {train.get('epochs')} epochs with early "
        f"stopping (patience {train.get('patience')}), backend {cfg['backend']}"
        + (f", model options {cfg['model_options']}" if cfg["model_options"] else "")
        + ".",
        "",
    ]
    if timing and timing.get("scale"):
        t = timing["scale"]
        reused = (
            f"; {t['reused']} of the {len(scale['runs'])} runs were reused from an earlier "
            "invocation and are not in this time"
            if t.get("reused")
            else ""
        )
        lines += [
            f"Time of the `fastme experiment scale` invocation: {t['wall_s'] / 60:.1f} min "
            f"wall, {t['cpu_s'] / 60:.1f} min CPU (user + sys){reused}.",
            "",
        ]
    lines += ["**What these numbers support**:", ""]
    lines += [f"- {line}" for line in conclusion(scale)["lines"]]
    lines += [""]
    lines += scale_tables(scale)
    lines += [
        "",
        "![test AUC](results/scale_auc.png) ![IA / random](results/scale_ia.png)",
        "",
        "![IA per field](results/scale_field_ia.png)",
        "",
        "## Toy experiment (Evidence II, Figure 4)",
        "",
        "`fastme experiment toy`:",
        "",
    ]
    lines += toy_table(toy)
    if timing and timing.get("toy"):
        lines += [
            "",
            f"Time: {timing['toy']['wall_s']:.0f} s wall, {timing['toy']['cpu_s']:.0f} s CPU.",
        ]
    lines += ["", "![toy](results/toy.png)", ""]
    return "\n".join(lines)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _timed(run) -> dict:
    wall, cpu = time.time(), _cpu_seconds()
    run()
    return {"wall_s": time.time() - wall, "cpu_s": _cpu_seconds() - cpu}


def _toy() -> None:
    """``fastme experiment toy`` with its defaults."""
    from fastme.analysis.plots import plot_toy
    from fastme.experiments.toy import run_toy

    plot_toy(run_toy(), TOY_DIR / "toy")


def _scale() -> None:
    """``fastme experiment scale --no-progress`` with its defaults."""
    from fastme.data import load_dataset
    from fastme.experiments.scale import default_train_options, run_scale

    run_scale(
        PRESETS["cpu"]["model"],
        load_dataset("synthetic"),
        train_options=default_train_options(),
        out_dir=SCALE_DIR,
        data_spec="synthetic",
        data_options={},
    )


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()


def _commit() -> str | None:
    """The checkout's commit, with "+ local changes" when the code (not the docs this page is
    part of) differs from it; None outside a git checkout."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        code = (":/fastme", ":/kernels", ":/csrc", ":/setup.py", ":/CMakeLists.txt")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", *code)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" + local changes" if dirty else "")


def describe_machine() -> str:
    """What the results page says of the machine that produced it: CPU, cores, torch, the
    commit."""
    commit = _commit()
    return (
        f"{cpu_description()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, torch {torch.__version__}"
        + (f", commit {commit}" if commit else "")
    )


def write_results(
    out="docs/results.md", from_outputs: bool = False, machine: str | None = None
) -> Path:
    """Run both experiments (unless ``from_outputs``) and write the page ``out`` with its figures
    beside it in ``results/``; returns that directory. ``machine``: a description of the machine
    (and anything measured outside, e.g. the CPU time of reused runs), for the page."""
    timing = {}
    if not from_outputs:
        timing["toy"] = _timed(_toy)
        finished = len(list((SCALE_DIR / "runs").glob("*/scale_record.json")))
        timing["scale"] = _timed(_scale)
        timing["scale"]["reused"] = finished
    try:
        scale = json.loads((SCALE_DIR / "scale.json").read_text())
        toy = json.loads((TOY_DIR / "toy.json").read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{exc.filename} is missing; run without --from-outputs") from None
    out = Path(out)
    figures = out.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    for src in (
        SCALE_DIR / "scale_auc.png",
        SCALE_DIR / "scale_ia.png",
        SCALE_DIR / "scale_field_ia.png",
        TOY_DIR / "toy.png",
    ):
        if src.is_file():
            with replace_on_success(figures / src.name) as tmp:
                shutil.copyfile(src, tmp)
    if timing:
        write_text(SCALE_DIR / "timing.json", json.dumps(timing, indent=1) + "\n")
    elif (SCALE_DIR / "timing.json").is_file():
        timing = json.loads((SCALE_DIR / "timing.json").read_text())
    write_text(out, render(scale, toy, timing, machine or describe_machine()))
    return figures
