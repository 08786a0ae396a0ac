"""Render a benchmark record (written by every `pytest bench/ --benchmark-only` run) into
bench/RESULTS.md; never edit RESULTS.md by hand.

    pytest bench/ --benchmark-only                       # writes bench/records/latest.json
    python bench/render_results.py bench/records/latest.json          # -> bench/RESULTS.md
    python bench/render_results.py run1.json --rerun run2.json        # + does each verdict hold?
    python bench/render_results.py run.json -o -                      # print instead

A record whose machine checks found a disturbance is refused unless ``--allow-disturbed``;
the table then says, on top, that it was measured on a loaded machine and why.
The same summary is printed at the end of every benchmark run (bench/conftest.py).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

HEADERS = (
    "case",
    "variant",
    "median",
    "spread",
    "vs eager (10–90% of rounds)",
    "verdict",
    "achieved",
    "of peak",
)


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def peaks(record: dict) -> dict | None:
    """Best-of peaks over the start and end probes (the machine's capability)."""
    probes = [p for p in (record["machine"]["probe_start"], record["machine"]["probe_end"]) if p]
    if not probes:
        return None
    return {
        "gbps": max(p["peak_gbps"] for p in probes),
        "tflops": max(p["peak_tflops"] for p in probes),
    }


def roofline(seconds: float, nbytes: float, flops: float, peak: dict | None):
    """(achieved, fraction of peak) for the resource that bounds this case on the roofline."""
    if not peak:
        return f"{nbytes / seconds / 1e9:.3g} GB/s", "–"
    t_mem = nbytes / (peak["gbps"] * 1e9)
    t_flop = flops / (peak["tflops"] * 1e12)
    # Above 100%: the case beat the probe, so the probe underestimates that peak (e.g. a copy
    # pays write-allocate traffic that the count of bytes moved leaves out).
    if t_flop > t_mem:
        fraction, what = t_flop / seconds, "FLOP"
        achieved = f"{flops / seconds / 1e12:.3g} TFLOP/s"
    else:
        fraction, what = t_mem / seconds, "mem"
        achieved = f"{nbytes / seconds / 1e9:.3g} GB/s"
    return achieved, f"{fraction:.0%} {what}" + (" (above probe)" if fraction > 1 else "")


def verdict(ratio: dict) -> str:
    """'faster' / 'slower' when the whole interval is on one side of 1, else 'unresolved': the
    spread between rounds is larger than the ratio's margin from 1, so no winner is named.
    (Here rather than in harness.py, which imports it, so that rendering needs no torch.)"""
    if ratio["low"] > 1.0:
        return "faster"
    if ratio["high"] < 1.0:
        return "slower"
    return "unresolved"


def _rows(record: dict, kind: str, rerun: dict | None) -> list[list[str]]:
    peak = peaks(record)
    again = {c["case_id"]: c for c in (rerun or {}).get("cases", [])}
    rows = []
    for case in (c for c in record["cases"] if c["kind"] == kind):
        mark = " (loaded)" if case.get("disturbed") else ""
        for name, v in case["variants"].items():
            r = v["vs_baseline"]
            if name == record["config"]["baseline"]:
                ratio, said = "1 (baseline)", "–"
            else:
                ratio = f"{r['median']:.2f}× [{r['low']:.2f}–{r['high']:.2f}]"
                said = verdict(r) + mark
                other = again.get(case["case_id"], {}).get("variants", {}).get(name)
                if rerun is not None:
                    said += (
                        f"; re-run {other['vs_baseline']['median']:.2f}× "
                        f"{verdict(other['vs_baseline'])}"
                        if other
                        else "; not re-run"
                    )
            achieved, fraction = roofline(v["median"], case["bytes"], case["flops"], peak)
            rows.append(
                [
                    case["case"],
                    name,
                    _fmt_time(v["median"]),
                    f"±{v['spread'] / 2:.0%}",
                    ratio,
                    said,
                    achieved,
                    fraction,
                ]
            )
        for u in record.get("unavailable", []):
            if u["case_id"] == case["case_id"]:
                rows.append(
                    [case["case"], u["variant"], f"unavailable: {u['reason']}", "", "", "", "", ""]
                )
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * 4 + ["---:"] * (len(HEADERS) - 6)) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _probe_line(name: str, probe: dict | None) -> str:
    if not probe:
        return f"{name}: not measured"
    c, m = probe["copy_gbps"], probe["matmul_fp32_tflops"]
    return (
        f"{name}: copy best {c['best']:.1f} GB/s (median {c['median']:.1f}, spread "
        f"{c['spread']:.0%}, {c['repeats']} repeats); {probe['matmul_n']}³ fp32 matmul best "
        f"{m['best']:.3g} TFLOP/s (median {m['median']:.3g}, spread {m['spread']:.0%})"
        + (
            f"; TF32 best {probe['matmul_tf32_tflops']['best']:.3g} TFLOP/s"
            if probe.get("matmul_tf32_tflops")
            else ""
        )
    )


def agreement(record: dict, rerun: dict) -> str:
    """How many of the first run's verdicts the re-run repeats."""
    again = {c["case_id"]: c for c in rerun["cases"]}
    same = flipped = softened = total = 0
    for case in record["cases"]:
        for name, v in case["variants"].items():
            other = again.get(case["case_id"], {}).get("variants", {}).get(name)
            if name == record["config"]["baseline"] or other is None:
                continue
            total += 1
            a, b = verdict(v["vs_baseline"]), verdict(other["vs_baseline"])
            if a == b:
                same += 1
            elif "unresolved" in (a, b):
                softened += 1
            else:
                flipped += 1
    return (
        f"Re-run ({rerun['date']}): of {total} ratios, {same} got the same verdict, "
        f"{softened} were resolved in one run and unresolved in the other, {flipped} named the "
        f"opposite winner."
    )


def summary(record: dict, rerun: dict | None = None) -> str:
    """Header lines and one table per kind of case (ops, then models)."""
    m = record["machine"]
    load = ", ".join(
        f"{k.split('_')[1]} {m[k]:.2f}"
        for k in ("loadavg_start", "loadavg_end")
        if m.get(k) is not None
    )
    commit = f", commit {record['commit'][:10]}" if record.get("commit") else ""
    out = [
        f"Device: {record['device']}; measured {record['date']}{commit}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
        _probe_line("Peak probe at the start", m["probe_start"]),
        _probe_line("Peak probe at the end", m["probe_end"]),
        f"1-minute load average ({m['cores']} cores): {load or 'not available'}",
    ]
    if m["disturbed"]:
        out += [
            "",
            "**Measured on a loaded machine**: " + "; ".join(m["problems"]) + ". "
            "Interleaving keeps the ratios comparable within a round, but absolute times "
            "and the roofline fractions are those of a shared machine.",
        ]
    else:
        out += ["", "Machine checks: no sign of other load during the run."]
    if rerun is not None:
        out += ["", agreement(record, rerun)]
    for kind, title in (("op", "Fused ops"), ("model", "Training step and inference")):
        rows = _rows(record, kind, rerun)
        if rows:
            out += ["", f"### {title}", "", markdown_table(rows)]
    peers = {}  # (name, description) in first-seen order: one name may serve several cases
    for case in record["cases"]:
        for name, v in case["variants"].items():
            if v.get("peer"):
                peers.setdefault((name, v["peer"]), None)
    if peers:
        out += ["", "Outside peers:"] + [f"- `{k}`: {v}" for k, v in peers]
    return "\n".join(out)


def render_markdown(record: dict, rerun: dict | None = None, note: str | None = None) -> str:
    c = record["config"]
    lines = ["# Benchmark results", ""]
    if record["device_type"] != "cuda":
        lines += [
            "**CPU run** at reduced sizes (cardinalities / 100, smaller batches): these "
            "numbers compare fastme's CPU path with its peers on a CPU; they say nothing "
            "about the GPU kernels.",
            "",
        ]
    if note:
        lines += [note, ""]
    lines += [
        "Generated by `bench/render_results.py` from the record of one "
        "`pytest bench/ --benchmark-only` run (bench/README.md says how to reproduce it); "
        "not edited by hand.",
        "",
        f"Shapes: N={c['fields']} fields, K={c['embed_dim']}, {c['rows']:,} table rows "
        f"(Criteo-like cardinalities{'' if record['full_shapes'] else ' / 100'}), ops at "
        f"B={c['op_batch']} with M in {c['op_sets']}, models at B={c['model_batch']} with scales "
        f"{c['model_scales']}, {c['cross_layers']} cross layers. Timing: {c['timing']}, "
        f"{c['rounds']} rounds of about {c['round_seconds'] * 1e3:.0f} ms per variant; "
        f"torch threads {c['torch_threads']}. Kernel backends found: "
        f"{', '.join(c['kernel_backends']) or 'none'}.",
        "",
        "`median`: median per-call time over the rounds; `spread`: half the 10–90% range of the "
        "rounds, relative to the median. `vs eager`: per-round eager time / this variant's time "
        "(above 1 = faster), median and 10–90% range over the rounds. `verdict`: `faster` / "
        "`slower` only when that whole range is on one side of 1, otherwise `unresolved` (the "
        "rounds disagree by more than the margin: no winner). `(loaded)`: other processes used "
        "over 10% of the CPU while this case was timed. `achieved` / `of peak`: the resource that "
        "bounds the case on the roofline against the best-of probe peak.",
        "",
        summary(record, rerun),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=pathlib.Path, help="record of a run (bench/records/*.json)")
    parser.add_argument(
        "--rerun",
        type=pathlib.Path,
        help="record of a second run: show whether each verdict reproduces",
    )
    default = pathlib.Path(__file__).with_name("RESULTS.md")
    parser.add_argument(
        "-o",
        "--output",
        default=str(default),
        help="markdown file to write, '-' for stdout (default: bench/RESULTS.md)",
    )
    parser.add_argument("--note", help="a paragraph to add under the title (e.g. on the machine)")
    parser.add_argument(
        "--allow-disturbed",
        action="store_true",
        help="render a record whose machine checks found other load (it is "
        "marked as measured on a loaded machine)",
    )
    args = parser.parse_args(argv)
    try:
        record = json.loads(args.record.read_text())
        rerun = json.loads(args.rerun.read_text()) if args.rerun else None
        if record.get("schema") != 1:
            raise ValueError(
                "not a fastme benchmark record (no schema 1); write one with "
                "`pytest bench/ --benchmark-only`"
            )
        if record["machine"]["disturbed"] and not args.allow_disturbed and args.output != "-":
            print(
                f"render_results: {args.record} was measured on a disturbed machine ("
                + "; ".join(record["machine"]["problems"])
                + "); re-run on a quiet machine, "
                "or pass --allow-disturbed to render it marked as such",
                file=sys.stderr,
            )
            return 2
        text = render_markdown(record, rerun, note=args.note)
    except (OSError, ValueError, KeyError) as exc:
        print(f"render_results: cannot render {args.record}: {exc}", file=sys.stderr)
        return 1
    if args.output == "-":
        sys.stdout.write(text)
    else:
        pathlib.Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
