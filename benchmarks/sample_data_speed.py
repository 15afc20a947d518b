"""Generation time of the bundled sample (``preprocess.sample_data``), each form at default scale.

    .venv/bin/python -m benchmarks.sample_data_speed [--repeats 2] [--limit_s 15]

Each run is a fresh subprocess, ``python -m preprocess.sample_data --schema S --output F`` into a
temporary folder (deleted afterwards), timed from interpreter start to exit; the 1-minute load
average is recorded before each run (the machine may be shared). Writes
``benchmarks/results/sample_data_speed.json`` and exits 1 when a form's median exceeds
``--limit_s`` (a generous bound: the target is well under it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import REPO, machine, versions
from preprocess import sample_data


def time_form(schema: str, folder: str) -> dict:
    path = os.path.join(folder, f"{schema}.json")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "preprocess.sample_data", "--schema", schema, "--output", path],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    with open(path, "rb") as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 24), b""))
    run = {"schema": schema, "wall_s": round(wall, 3), "load_1min_before": load,
           "bytes": os.path.getsize(path), "lines": lines}
    os.remove(path)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit_s", type=float, default=15.0)
    parser.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results", "sample_data_speed.json"))
    args = parser.parse_args()
    host = machine()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for schema in sample_data.SCHEMAS:  # alternating, so background load hits both alike
                runs.append(time_form(schema, folder))
                print(json.dumps(runs[-1]), flush=True)
    medians = {s: statistics.median(r["wall_s"] for r in runs if r["schema"] == s) for s in sample_data.SCHEMAS}
    report = {"visitors": sample_data.DEFAULT_VISITORS, "items": 4_000, "seed": 42, "machine": host,
              "versions": versions(("numpy",)), "median_wall_s": medians, "limit_s": args.limit_s, "runs": runs}
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"median wall s: {medians} (limit {args.limit_s} s) -> {args.results}")
    return 0 if all(m <= args.limit_s for m in medians.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
