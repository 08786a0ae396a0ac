"""Raw Criteo preprocessing speed and memory, on a generated file of the real file's shape.

    python bench/preprocess.py --rows 1000000                   # this checkout, 3 rounds
    python bench/preprocess.py --rows 1000000 --tree /tmp/old   # and another checkout, alternated
    python bench/preprocess.py --rows 1000000 --parquet         # the same rows as 4 Parquet files

Each round builds the cache once per source tree, in a fresh process (its peak resident memory
is its own: ``ru_maxrss``, and the peak of its anonymous memory, which leaves out pages of files
it reads or maps, sampled every 50 ms), alternating the trees (A B, B A, ...); every build is
checked to give the same ``x.npy``, ``y.npy`` and ``vocab.json`` as the first. Reported per
tree: median wall seconds and rows/s, CPU seconds, peak memory, and per round the ratio to the
first tree. bench/README.md says how
each published number was made.

The generated file has the Kaggle ``train.txt`` layout (label, 13 integer columns, 26 hashed
8-hex-digit categories, tab-separated, ~240 bytes a row), about 15% empty cells, and each
categorical column drawn from the real file's cardinality (capped at twice the rows) with a
heavy head, so that the number of distinct values per block resembles the real file's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Distinct values of C1..C26 in the Kaggle Criteo train.txt.
CRITEO_CARDINALITIES = [
    1460,
    583,
    10131227,
    2202608,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    8351593,
    3194,
    27,
    14992,
    5461306,
    10,
    5652,
    2173,
    4,
    7046547,
    18,
    15,
    286181,
    105,
    142572,
]
_CHUNK_ROWS = 1 << 20


def _hex_column(values: np.ndarray, valid: np.ndarray):
    import pyarrow as pa

    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    data = digits[(values[:, None] >> shifts) & 15].astype(np.uint8).ravel()
    offsets = np.arange(0, 8 * len(values) + 1, 8, dtype=np.int32)
    bitmap = np.packbits(valid, bitorder="little")
    return pa.Array.from_buffers(
        pa.string(), len(values), [pa.py_buffer(bitmap), pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def criteo_like_tables(rows: int, seed: int = 0):
    """``rows`` generated rows of the raw Criteo columns (see the docstring), as pyarrow tables
    of up to 2^20 rows (integer columns int64, categories strings, empty = null)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    for start in range(0, rows, _CHUNK_ROWS):
        n = min(_CHUNK_ROWS, rows - start)
        cols = {"label": pa.array((rng.random(n) < 0.25).astype(np.int8))}
        for i in range(13):
            v = np.floor(np.exp(rng.random(n) * 8)).astype(np.int64) - 1
            cols[f"I{i + 1}"] = pa.array(v, mask=rng.random(n) < 0.15)
        for j, card in enumerate(CRITEO_CARDINALITIES):
            card = min(card, 2 * rows)
            idx = np.floor(card * rng.random(n) ** 3).astype(np.uint64)  # a heavy head
            hashed = (idx * np.uint64(2654435761) + np.uint64(97531 * j)) % np.uint64(1 << 32)
            cols[f"C{j + 1}"] = _hex_column(hashed.astype(np.uint32), rng.random(n) >= 0.15)
        yield pa.table(cols)


def write_criteo_like(path: Path, rows: int, seed: int = 0) -> None:
    """Write ``rows`` generated rows in the raw Criteo layout (tab-separated text) to ``path``."""
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with open(path, "wb") as out:
        for table in criteo_like_tables(rows, seed):
            pacsv.write_csv(table, out, options)


def write_criteo_like_parquet(directory: Path, rows: int, files: int = 4, seed: int = 0) -> None:
    """The same rows as ``files`` Parquet files ``day_<i>.parquet`` in ``directory``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    tables = list(criteo_like_tables(rows, seed))
    table = pa.concat_tables(tables)
    per_file = -(-rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * per_file, per_file), directory / f"day_{i}.parquet")


_CHILD = """
import json, resource, sys, threading, time
from fastme.data import load_dataset  # imports torch: not timed, but in the peak memory
peak_anon = [0]
def sample():  # the process's own memory (not file pages it has read or mapped)
    while True:
        with open("/proc/self/status") as f:
            anon = next(int(l.split()[1]) for l in f if l.startswith("RssAnon:"))
        peak_anon[0] = max(peak_anon[0], anon * 1024)
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
options = {"integer": [f"I{i}" for i in range(1, 14)]} if sys.argv[1].startswith("parquet:") else {}
t, c = time.perf_counter(), time.process_time()
data = load_dataset(sys.argv[1], cache_dir=sys.argv[2], progress=False, rebuild=True, **options)
wall, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"rows": len(data), "wall": wall, "cpu": cpu,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "peak_anon": peak_anon[0],
                  "cache": data.info["cache_dir"]}))
"""


def build(tree: Path, spec: str, cache_dir: Path) -> dict:
    """One cache build of the data ``spec`` by the fastme of source ``tree``, in a fresh
    process."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, spec, str(cache_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"preprocessing with {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _contents(cache: Path) -> tuple:
    return (
        np.load(cache / "x.npy", mmap_mode="r"),
        np.load(cache / "y.npy", mmap_mode="r"),
        (cache / "vocab.json").read_text(),
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        default=[],
        help="another source tree to compare (e.g. a git worktree of an older "
        "commit); this checkout is always the first",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the generated file and caches go (default: a temp dir)",
    )
    parser.add_argument(
        "--parquet",
        action="store_true",
        help="the generated rows as 4 Parquet files (integer columns as ints)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args(argv)
    trees = [Path(__file__).resolve().parents[1], *[t.resolve() for t in args.tree]]
    work = args.dir or Path(tempfile.mkdtemp(prefix="fastme-preprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = work / (f"criteo-like-{args.rows}" + ("-parquet" if args.parquet else ".txt"))
    if not raw.exists():
        started = time.perf_counter()
        if args.parquet:
            write_criteo_like_parquet(raw, args.rows)
        else:
            write_criteo_like(raw, args.rows)
        size = sum(f.stat().st_size for f in raw.rglob("*")) if raw.is_dir() else raw.stat().st_size
        print(
            f"generated {raw} ({size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    spec = f"parquet:{raw}" if args.parquet else f"criteo:{raw}"
    results: dict[int, list[dict]] = {i: [] for i in range(len(trees))}
    reference = None
    try:
        for r in range(args.rounds):
            order = list(range(len(trees)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for i in order:
                cache_dir = work / f"cache-{i}"
                result = build(trees[i], spec, cache_dir)
                got = _contents(Path(result["cache"]))
                if reference is None:
                    reference = got
                elif not (
                    np.array_equal(got[0], reference[0])
                    and np.array_equal(got[1], reference[1])
                    and got[2] == reference[2]
                ):
                    raise SystemExit(f"{trees[i]} built a different cache")
                del got
                shutil.rmtree(cache_dir)
                results[i].append(result)
                print(
                    f"round {r + 1} {trees[i]}: {result['wall']:.1f} s wall, "
                    f"{result['cpu']:.1f} s CPU, {result['rows'] / result['wall']:,.0f} rows/s, "
                    f"peak RSS {result['peak_rss'] / 1e9:.2f} GB (anonymous "
                    f"{result['peak_anon'] / 1e9:.2f} GB)",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(raw) if raw.is_dir() else raw.unlink(missing_ok=True)
    print(
        f"\n{args.rows:,} rows ({raw.name}), {args.rounds} rounds, load average "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    for i, tree in enumerate(trees):
        walls = [x["wall"] for x in results[i]]
        line = (
            f"{tree}: median {statistics.median(walls):.2f} s "
            f"({args.rows / statistics.median(walls):,.0f} rows/s), CPU "
            f"{statistics.median(x['cpu'] for x in results[i]):.2f} s, peak RSS "
            f"{max(x['peak_rss'] for x in results[i]) / 1e9:.2f} GB (anonymous "
            f"{max(x['peak_anon'] for x in results[i]) / 1e9:.2f} GB)"
        )
        if i:
            per_round = [b["wall"] / a["wall"] for a, b in zip(results[0], results[i])]
            ratios = ", ".join(f"{q:.2f}" for q in per_round)
            line += f"; its time / the first's per round: {ratios}"
        print(line)


if __name__ == "__main__":
    main()
