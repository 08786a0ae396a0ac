"""Render a pytest-benchmark JSON file of this suite into bench/RESULTS.md.

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    python bench/render_results.py bench.json            # writes bench/RESULTS.md
    python bench/render_results.py bench.json -o -       # prints it

The same table is printed at the end of every benchmark run (bench/conftest.py).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

VARIANT_ORDER = ("eager", "compile", "triton", "cuda", "fbgemm")
# Cases are listed in this order (by title prefix), whatever order pytest ran them in.
CASE_ORDER = ("multi_embedding_lookup", "pooled_lookup FM ", "pooled_lookup FwFM",
              "cross_network", "lookup_cross_network", "ME-DCNv2", "ME-NFwFM", "ME-DNN ")
HEADERS = ("case", "variant", "median time", "vs eager", "vs compile", "achieved", "of peak")


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _ratio(reference: float | None, seconds: float) -> str:
    return "–" if reference is None else f"{reference / seconds:.2f}×"


def roofline(seconds: float, nbytes: float, flops: float, peaks: dict | None):
    """(achieved, fraction of peak) for the resource that bounds this case on the roofline."""
    if not peaks:
        return f"{nbytes / seconds / 1e9:.1f} GB/s", "–"
    t_mem = nbytes / (peaks["peak_gbps"] * 1e9)
    t_flop = flops / (peaks["peak_tflops"] * 1e12)
    if t_flop > t_mem:
        return f"{flops / seconds / 1e12:.3g} TFLOP/s", f"{t_flop / seconds:.1%} FLOP"
    return f"{nbytes / seconds / 1e9:.3g} GB/s", f"{t_mem / seconds:.1%} mem"


def table_rows(records: list[dict], unavailable: list[dict], peaks: dict | None) -> list[list[str]]:
    """Rows of the summary: cases in first-seen order, variants eager, compile, then kernels."""
    cases: dict[str, dict[str, dict]] = {}
    for r in records:
        cases.setdefault(r["case"], {})[r["variant"]] = r
    for u in unavailable:
        cases.setdefault(u["case"], {}).setdefault(u["variant"], u)

    def order(variant):
        return VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)

    def case_order(case):
        return next((i for i, p in enumerate(CASE_ORDER) if case.startswith(p)), len(CASE_ORDER))

    rows = []
    for case, variants in sorted(cases.items(), key=lambda item: case_order(item[0])):
        eager = variants.get("eager", {}).get("seconds")
        compiled = variants.get("compile", {}).get("seconds")
        for variant in sorted(variants, key=order):
            r = variants[variant]
            if "seconds" not in r:
                rows.append([case, variant, f"unavailable: {r['reason']}", "", "", "", ""])
                continue
            achieved, fraction = roofline(r["seconds"], r["bytes"], r["flops"], peaks)
            rows.append([case, variant, _fmt_time(r["seconds"]), _ratio(eager, r["seconds"]),
                         _ratio(compiled, r["seconds"]), achieved, fraction])
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(HEADERS) - 2)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def peaks_line(peaks: dict | None) -> str:
    if not peaks:
        return "Device peaks: not measured (no case was timed)."
    line = (f"Device peaks measured in this run: copy {peaks['peak_gbps']:.1f} GB/s "
            f"({peaks['copy_bytes'] / 2**30:.2f} GiB moved per copy); "
            f"{peaks['matmul_n']}³ matmul fp32 {peaks['matmul_fp32_tflops']:.3g} TFLOP/s")
    if peaks.get("matmul_tf32_tflops"):
        line += f", TF32 {peaks['matmul_tf32_tflops']:.3g} TFLOP/s"
    return line + f" (peak used: {peaks['peak_tflops']:.3g} TFLOP/s)."


def summary(meta: dict, records: list[dict]) -> str:
    """Header lines and one table per kind of case (ops, then models)."""
    out = [f"Device: {meta['device']}",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
           peaks_line(meta.get("peaks"))]
    for kind, title in (("op", "Fused ops"), ("model", "Training step and inference")):
        rows = table_rows([r for r in records if r["kind"] == kind],
                          [u for u in meta.get("unavailable", []) if u["kind"] == kind],
                          meta.get("peaks"))
        if rows:
            out += ["", f"### {title}", "", markdown_table(rows)]
    return "\n".join(out)


def records_from_json(data: dict) -> list[dict]:
    records = []
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "case" not in info:
            continue
        records.append({"case": info["case"], "kind": info["kind"], "variant": info["variant"],
                        "seconds": bench["stats"]["median"], "bytes": info["bytes"],
                        "flops": info["flops"]})
    return records


def render_markdown(data: dict, note: str | None = None) -> str:
    meta = data.get("fastme")
    if meta is None:
        raise ValueError("this JSON has no 'fastme' section; write it with "
                         "`pytest bench/ --benchmark-only --benchmark-json=FILE`")
    settings = meta["settings"]
    cpu = meta["device_type"] != "cuda"
    commit = data.get("commit_info", {})
    lines = ["# Benchmark results", ""]
    if cpu:
        lines += ["**CPU run** at reduced sizes (cardinalities / 100, smaller batches): these "
                  "numbers show the suite works and how the eager and compiled references compare "
                  "on a CPU; they say nothing about the GPU kernels. Run the suite on a GPU for "
                  "the real table.", ""]
    if note:
        lines += [note, ""]
    lines += [
        f"Generated by `bench/render_results.py` from `pytest bench/ --benchmark-only "
        f"--benchmark-json=...`, {data.get('datetime', '')[:19].replace('T', ' ')} UTC"
        + (f", commit {commit['id'][:10]}{' (dirty)' if commit.get('dirty') else ''}"
           if commit.get("id") else "") + ".",
        "",
        f"Shapes: N={settings['fields']} fields, K={settings['embed_dim']}, "
        f"{settings['rows']:,} table rows (Criteo-like cardinalities"
        f"{'' if meta['full_shapes'] else ' / 100'}), ops at B={settings['op_batch']} "
        f"with M in {settings['op_sets']}, models at B={settings['model_batch']} with scales "
        f"{settings['model_scales']}, {settings['cross_layers']} cross layers. Timing: "
        f"{settings['timing']}. Kernel backends found: "
        f"{', '.join(settings['kernel_backends']) or 'none'}.",
        "",
        "`vs eager` / `vs compile` = that variant's time / this row's time (above 1 is faster). "
        "`achieved` and `of peak` are for the resource that bounds the case on the roofline "
        "(bytes and FLOPs counted as in bench/README.md).",
        "",
        summary(meta, records_from_json(data)),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=pathlib.Path, help="file written by --benchmark-json")
    default = pathlib.Path(__file__).with_name("RESULTS.md")
    parser.add_argument("-o", "--output", default=str(default),
                        help="markdown file to write, '-' for stdout (default: bench/RESULTS.md)")
    parser.add_argument("--note", help="a paragraph to add under the title (e.g. on the machine)")
    args = parser.parse_args(argv)
    try:
        text = render_markdown(json.loads(args.json.read_text()), note=args.note)
    except (OSError, ValueError, KeyError) as exc:
        print(f"render_results: cannot render {args.json}: {exc}", file=sys.stderr)
        return 1
    if args.output == "-":
        sys.stdout.write(text)
    else:
        pathlib.Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
