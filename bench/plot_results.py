"""Draw a benchmark record as a chart: per case, every variant's speed-up over fastme's eager
reference, with the 10-90% range of the per-round ratios as an error bar.

    python bench/plot_results.py bench/records/latest.json            # -> bench/results.png
    python bench/plot_results.py run.json -o chart.png
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(record: dict, path: pathlib.Path) -> None:
    """One bar per (case, variant) other than the baseline, coloured by variant."""
    baseline = record["config"]["baseline"]
    rows = [
        (case, name, v)
        for case in record["cases"]
        for name, v in case["variants"].items()
        if name != baseline
    ]
    names = list(dict.fromkeys(name for _, name, _ in rows))
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.22 * len(rows)))
    for y, (_case, name, v) in enumerate(rows):
        r = v["vs_baseline"]
        ax.errorbar(
            r["median"],
            y,
            xerr=[[r["median"] - r["low"]], [r["high"] - r["median"]]],
            fmt="o",
            color=colours[name],
            capsize=2,
            markersize=4,
        )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(
        range(len(rows)),
        [
            f"{case['case']}{' (loaded)' if case.get('disturbed') else ''}: {name}"
            for case, name, _ in rows
        ],
        fontsize=6,
    )
    for label, (_, name, _) in zip(ax.get_yticklabels(), rows):
        label.set_color(colours[name])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.grid(axis="x", which="both", linewidth=0.3)
    ax.set_xlabel(
        f"speed-up over {baseline}: per-round ratio, median and 10-90% range "
        "(right of the line = faster)"
    )
    loaded = " — measured on a loaded machine" if record["machine"]["disturbed"] else ""
    ax.set_title(f"{record['device']}, {record['date']}{loaded}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=pathlib.Path, help="record of a run (bench/records/*.json)")
    parser.add_argument(
        "-o", "--output", type=pathlib.Path, default=pathlib.Path(__file__).with_name("results.png")
    )
    args = parser.parse_args(argv)
    try:
        record = json.loads(args.record.read_text())
        plot(record, args.output)
    except (OSError, ValueError, KeyError) as exc:
        print(f"plot_results: cannot plot {args.record}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
