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
    baseline = record["config"]["baseline"]
    cases = record["cases"]
    names = sorted({n for c in cases for n in c["variants"] if n != baseline})
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.32 * len(cases) * max(1, len(names)) / 2)))
    height = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ys, xs, lo, hi = [], [], [], []
        for row, case in enumerate(cases):
            v = case["variants"].get(name)
            if v is None:
                continue
            r = v["vs_baseline"]
            ys.append(row + (i - (len(names) - 1) / 2) * height)
            xs.append(r["median"])
            lo.append(r["median"] - r["low"])
            hi.append(r["high"] - r["median"])
        ax.barh(ys, xs, height=height, xerr=[lo, hi], label=name, capsize=2)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels([c["case"] + (" (loaded)" if c.get("disturbed") else "")
                        for c in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"speed-up over {baseline} (per-round ratio: median, 10-90% range)")
    loaded = " — measured on a loaded machine" if record["machine"]["disturbed"] else ""
    ax.set_title(f"{record['device']}, {record['date']}{loaded}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=pathlib.Path, help="record of a run (bench/records/*.json)")
    parser.add_argument("-o", "--output", type=pathlib.Path,
                        default=pathlib.Path(__file__).with_name("results.png"))
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
