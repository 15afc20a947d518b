"""Preprocessing throughput and memory: the Beam/tf.Transform pipeline (local FnApiRunner) against
the same transformation in pandas, on the same input file: GA360 sessions
(``benchmarks/preprocess_pandas.py``) or, with ``--schema ga4``, the GA4 events form of the same
visits (``benchmarks/preprocess_pandas_ga4.py``, a peer that reads GA4 events itself).

    .venv/bin/python -m benchmarks.preprocess_speed                      # scales 1 and 10, 3 repeats
    .venv/bin/python -m benchmarks.preprocess_speed --scales 1 --repeats 5
    .venv/bin/python -m benchmarks.preprocess_speed --scales 1 --repeats 0 --profile   # profile only
    .venv/bin/python -m benchmarks.preprocess_speed --schema ga4 --scales 1 3 10 --repeats 1

Inputs: ``preprocess.sample_data`` (GA360 form, or GA4 form with ``--schema ga4``) with seed 42
and 4,000 articles; scale 1 is the bundled sample (150,000 visitors, about 370k interactions;
200 MB as GA360 sessions, 910 MB as GA4 events), scale s has s × 150,000 visitors. They are
generated once and cached in ``--data_dir`` (``data/bench/``, git-ignored), and made again when
older than the generator.

Each run is a fresh subprocess, pipeline and pandas alternating so that background load hits
both alike, both reading the same file. GA360: ``python -m preprocess --runner FnApiRunner
--input X --input_format ga_json --output_dir Y`` and ``python -m benchmarks.preprocess_pandas
--input X --output_dir Y``; GA4: ``python -m preprocess --runner FnApiRunner --input X
--input_format ga4_json --item_source event_param:article_id --output_dir Y`` and ``python -m
benchmarks.preprocess_pandas_ga4 --input X --item_source event_param:article_id --output_dir Y``.
Each is started through this module's ``--child`` mode, which runs the module unchanged
(``runpy``) and only adds timers: imports, graph construction and ``Pipeline.run`` for the
pipeline (plus the per-transform execution msecs Beam's state sampler records), the peer's own
stage timer. Per run:

* ``wall_s``: the whole subprocess, interpreter start to exit, measured by this process;
* ``cpu_s``: user + system CPU seconds of the subprocess (``getrusage`` in the child);
* ``peak_rss_mb``: the larger of the child's own peak RSS (``VmHWM``) and the peak of the summed
  RSS of its process tree polled every 50 ms with psutil (both are lower bounds of the true peak);
* ``interactions_per_s``: interactions written / ``wall_s``.

Both outputs are compared (exit status 1 on a mismatch): users, items, interactions, median,
the two vocabulary files byte for byte (SHA-256), the drop counts the peer keeps, and with
``--schema ga4`` the number of events read (``tests/test_preprocess_pandas_peer.py`` checks the
records themselves). Medians over the repeats and the ratio pipeline / pandas go to
``--results_dir`` (default ``benchmarks/results/``; with ``--schema ga4``
``benchmarks/results/preprocess_speed_ga4_peer/``):
``preprocess_speed.json`` (machine, versions, git state, raw runs), ``preprocess_speed.png`` and
``preprocess_speed.md`` (the tables).
``--profile`` runs the pipeline once more under cProfile (scale = the first of ``--scales``)
and writes ``preprocess_profile.txt``: phases, time per pipeline stage, top functions.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import resource
import runpy
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from typing import Any, Optional, Sequence

from benchmarks.common import REPO, RESULTS, machine, versions

BASE_VISITORS = 150_000  # preprocess.sample_data.DEFAULT_VISITORS
GENERATOR = os.path.join(REPO, "preprocess", "sample_data.py")
PIPELINE, PANDAS = "pipeline", "pandas"
PIPELINE_MODULE = "preprocess"
PANDAS_MODULES = {"ga360": "benchmarks.preprocess_pandas", "ga4": "benchmarks.preprocess_pandas_ga4"}
GA4_ITEM_SOURCE = "event_param:article_id"  # the article ID of the sample's GA4 form
GA4_RESULTS = os.path.join(RESULTS, "preprocess_speed_ga4_peer")
MSECS_METRIC = "ptransform_execution_time:total_msecs"
PIPELINE_PACKAGES = ("apache-beam", "tensorflow", "tensorflow-transform", "tfx-bsl", "pandas", "numpy", "pyarrow")


# --------------------------------------------------------------------------- child side


def _high_water_mb() -> Optional[float]:
    """This process's peak RSS (``VmHWM``). Unlike ``ru_maxrss`` it belongs to the address
    space made by ``exec``, so it does not inherit the parent's peak (a vfork'ed child's
    ``ru_maxrss`` starts at the parent's)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _rusage() -> dict:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    high_water = _high_water_mb()
    return {
        "self_peak_rss_mb": high_water if high_water is not None else own.ru_maxrss / 1024.0,
        "ru_maxrss_children_mb": kids.ru_maxrss / 1024.0,
        "cpu_s": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
    }


def transform_msecs(result: Any) -> dict:
    """``{step name: msecs}`` from Beam's per-PTransform execution-time metrics (state sampler)."""
    out: dict = {}
    try:
        counters = result.monitoring_metrics().query()["counters"]
    except Exception:  # a runner without system metrics
        return out
    for counter in counters:
        if MSECS_METRIC in counter.key.metric.name and counter.key.step:
            value = counter.committed if counter.committed is not None else counter.attempted
            out[counter.key.step] = out.get(counter.key.step, 0) + int(value or 0)
    return {step: ms for step, ms in out.items() if ms}


def child(kind: str, report_path: str, argv: list[str], profile_path: Optional[str],
          peer_module: str = PANDAS_MODULES["ga360"]) -> None:
    """Runs one job in this process the way its CLI does and writes a JSON report."""
    started = time.perf_counter()
    module = PIPELINE_MODULE if kind == PIPELINE else peer_module
    report: dict = {"kind": kind, "module": module, "argv": argv}
    phases: dict = {}
    captured: dict = {}
    if kind == PIPELINE:
        import apache_beam as beam

        import preprocess.__main__  # noqa: F401  (Beam, TensorFlow, tf.Transform)
        import preprocess.pipeline as graph

        build, run = graph.build_pipeline, beam.Pipeline.run

        def timed_build(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return build(*args, **kwargs)
            finally:
                phases["build_graph_s"] = phases.get("build_graph_s", 0.0) + time.perf_counter() - t

        def timed_run(self: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                captured["result"] = run(self, *args, **kwargs)
                return captured["result"]
            finally:
                phases["pipeline_run_s"] = phases.get("pipeline_run_s", 0.0) + time.perf_counter() - t

        graph.build_pipeline = timed_build
        beam.Pipeline.run = timed_run
    else:
        import importlib

        import numpy  # noqa: F401
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401

        importlib.import_module(module)
    imported = time.perf_counter()
    phases["import_s"] = imported - started
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()

    real_exit = os._exit

    def finish(code: int) -> None:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        done = time.perf_counter()
        phases["main_s"] = done - imported
        report.update(exit_code=code, phases=phases, **_rusage())
        if "result" in captured:
            report["transform_msecs"] = transform_msecs(captured["result"])
        with open(report_path, "w") as handle:
            json.dump(report, handle, indent=1)
        sys.stdout.flush()
        sys.stderr.flush()
        real_exit(code)

    os._exit = finish  # the pipeline CLI ends with os._exit(code)
    sys.argv = [module, *argv]
    code = 1
    try:
        if profiler is not None:
            profiler.enable()
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finish(code)


# --------------------------------------------------------------------------- parent side


class TreeMemoryPoller:
    """Peak of the summed RSS of a process and its descendants, polled in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.series: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._start = time.perf_counter()
        self._thread.start()

    def _poll(self) -> None:
        last_kept = -1.0
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except self.psutil.Error:
                break
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except self.psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            now = time.perf_counter() - self._start
            if now - last_kept >= 0.5:
                self.series.append((round(now, 2), round(total / 2**20, 1)))
                last_kept = now
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(kind: str, job_argv: list[str], work_dir: str, tag: str,
                 profile_path: Optional[str] = None, timeout: float = 7200,
                 peer_module: str = PANDAS_MODULES["ga360"]) -> dict:
    """Runs one job in a fresh subprocess and returns its measurements (raises on failure)."""
    report_path = os.path.join(work_dir, f"report-{tag}.json")
    log_path = os.path.join(work_dir, f"log-{tag}.txt")
    if os.path.exists(report_path):
        os.remove(report_path)
    command = [sys.executable, "-m", "benchmarks.preprocess_speed", "--child", kind, report_path]
    if profile_path:
        command += ["--child_profile", profile_path]
    if kind == PANDAS:
        command += ["--child_module", peer_module]
    command += ["--", *job_argv]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    load_before = os.getloadavg()
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        poller = TreeMemoryPoller(process.pid)
        try:
            exit_code = process.wait(timeout=timeout)
        finally:
            wall = time.perf_counter() - started
            poller.stop()
    if exit_code != 0 or not os.path.exists(report_path):
        with open(log_path) as log:
            tail = log.read()[-4000:]
        raise RuntimeError(f"{kind} run {tag} failed with exit status {exit_code}; log {log_path}:\n{tail}")
    with open(report_path) as handle:
        report = json.load(handle)
    report.update(
        wall_s=wall,
        polled_peak_rss_mb=poller.peak / 2**20,
        peak_rss_mb=max(poller.peak / 2**20, report["self_peak_rss_mb"]),
        rss_series_mb=poller.series,
        load_before=load_before,
        load_after=os.getloadavg(),
        log=os.path.relpath(log_path, REPO),
    )
    return report


def ensure_input(scale: int, data_dir: str, base_visitors: int = BASE_VISITORS, schema: str = "ga360") -> dict:
    """The GA JSON sample with ``scale`` × 150,000 visitors (generated once, then cached);
    ``schema="ga4"``: its GA4 events form (the same simulated visits)."""
    visitors = scale * base_visitors
    name = f"ga_sessions_{visitors}_visitors.json" if schema == "ga360" else f"ga4_events_{visitors}_visitors.ndjson"
    path = os.path.join(data_dir, name)
    if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(GENERATOR):
        print(f"generating {path} ({visitors:,} visitors) ...", flush=True)
        t = time.perf_counter()
        # In a subprocess: the generator's temporary arrays would otherwise stay in this
        # process's memory for the whole benchmark.
        subprocess.run([sys.executable, "-m", "preprocess.sample_data", "--output", path, "--schema", schema,
                        "--visitors", str(visitors)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    with open(path, "rb") as handle:
        sessions = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 24), b""))
    inside = os.path.abspath(path).startswith(REPO + os.sep)
    return {"scale": scale, "path": os.path.relpath(path, REPO) if inside else os.path.abspath(path),
            "visitors": visitors, "schema": schema,
            "sessions": sessions, "bytes": os.path.getsize(path)}


def job_argv(kind: str, input_path: str, output_dir: str, timings_path: str, schema: str = "ga360") -> list[str]:
    """The command-line arguments of one job: the pipeline's (``python -m preprocess``) or the
    schema's pandas peer's (``PANDAS_MODULES``); both read ``input_path``."""
    if kind == PIPELINE and schema == "ga4":  # as ./run_dataflow.sh --sample_schema ga4 reads it
        return ["--runner", "FnApiRunner", "--input", input_path, "--input_format", "ga4_json",
                "--item_source", GA4_ITEM_SOURCE, "--output_dir", output_dir]
    if kind == PIPELINE:
        return ["--runner", "FnApiRunner", "--input", input_path, "--input_format", "ga_json",
                "--output_dir", output_dir]
    peer = ["--input", input_path, "--output_dir", output_dir, "--timings_json", timings_path]
    return peer + ["--item_source", GA4_ITEM_SOURCE] if schema == "ga4" else peer


def output_summary(output_dir: str) -> dict:
    """What the two outputs must agree on (``check_same``), from ``metadata.json`` and the
    vocabulary files it names."""
    with open(os.path.join(output_dir, "metadata.json")) as handle:
        meta = json.load(handle)
    summary = {k: meta.get(k) for k in ("nusers", "nitems", "ninteractions", "median_duration", "events")}
    summary["dropped"] = meta["dropped"]
    for name in ("user_vocabulary", "item_vocabulary"):
        with open(os.path.join(output_dir, meta[name]), "rb") as handle:
            summary[f"{name}_sha256"] = hashlib.sha256(handle.read()).hexdigest()
    return summary


def one_run(kind: str, info: dict, work_dir: str, repeat: int,
            profile_path: Optional[str] = None) -> dict:
    tag = f"{kind}-x{info['scale']}-r{repeat}" + ("-profile" if profile_path else "")
    output_dir = os.path.join(work_dir, f"out-{kind}-x{info['scale']}")
    timings = os.path.join(work_dir, f"stages-{tag}.json")
    schema = info.get("schema", "ga360")
    argv = job_argv(kind, os.path.join(REPO, info["path"]), output_dir, timings, schema)
    report = run_measured(kind, argv, work_dir, tag, profile_path, peer_module=PANDAS_MODULES[schema])
    report["input"] = info["path"]
    report.update(scale=info["scale"], repeat=repeat, **output_summary(output_dir))
    report["interactions_per_s"] = report["ninteractions"] / report["wall_s"]
    if kind == PANDAS:
        with open(timings) as handle:
            report["stages_s"] = json.load(handle)
    else:
        report["stages_s"] = stage_seconds(report.get("transform_msecs", {}))
    print(f"  {kind:8s} x{info['scale']} #{repeat}: {report['wall_s']:7.1f} s wall, "
          f"{report['cpu_s']:7.1f} s CPU, {report['peak_rss_mb']:7.0f} MB peak RSS, "
          f"{report['interactions_per_s']:9.0f} interactions/s (load {report['load_before'][0]:.1f})",
          flush=True)
    return report


def stage_of(step: str) -> str:
    """Groups a Beam step name into a pipeline stage (its first one or two name components)."""
    parts = step.split("/")
    if parts[0].startswith("ref_"):
        return "(runner data channels)"
    if parts[0] in ("ApplyVocabularies", "WriteRecords", "ReadGaSessions", "SessionizeHits") and len(parts) > 1:
        second = parts[1]
        if second == "AnalyzeAndTransform" and len(parts) > 2:
            second += "/" + parts[2]
        return parts[0] + "/" + second
    return parts[0]


def stage_seconds(msecs: dict) -> dict:
    stages: dict = defaultdict(float)
    for step, ms in msecs.items():
        stages[stage_of(step)] += ms / 1000.0
    return dict(sorted(stages.items(), key=lambda kv: -kv[1]))


def check_same(pipeline_run: dict, pandas_run: dict) -> None:
    """Exits (status 1) unless both runs read the same file and wrote the same counts, median,
    vocabularies and drop counts (those the peer keeps; the GA360 peer does not count events)."""
    keys = ["input", "nusers", "nitems", "ninteractions", "median_duration",
            "user_vocabulary_sha256", "item_vocabulary_sha256"]
    if pandas_run.get("events") is not None:
        keys.append("events")
    a, b = ({k: run[k] for k in keys} for run in (pipeline_run, pandas_run))
    a["dropped"] = {reason: pipeline_run["dropped"].get(reason) for reason in pandas_run["dropped"]}
    b["dropped"] = pandas_run["dropped"]
    if a != b:
        raise SystemExit(f"MISMATCH at scale {pipeline_run['scale']}: pipeline {a} != pandas {b}")


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for scale in sorted({r["scale"] for r in runs}):
        row: dict = {"scale": scale}
        for kind in (PIPELINE, PANDAS):
            mine = [r for r in runs if r["scale"] == scale and r["kind"] == kind]
            if not mine:
                continue
            stats = {
                "repeats": len(mine),
                "wall_s": median_of(mine, "wall_s"),
                "wall_s_min": min(r["wall_s"] for r in mine),
                "wall_s_max": max(r["wall_s"] for r in mine),
                "cpu_s": median_of(mine, "cpu_s"),
                "peak_rss_mb": median_of(mine, "peak_rss_mb"),
                "interactions_per_s": median_of(mine, "interactions_per_s"),
                "ninteractions": mine[0]["ninteractions"],
                "phases_s": {p: statistics.median(r["phases"].get(p, 0.0) for r in mine)
                             for p in mine[0]["phases"]},
            }
            stage_names = {s for r in mine for s in r.get("stages_s", {})}
            stats["stages_s"] = dict(sorted(
                ((s, statistics.median(r.get("stages_s", {}).get(s, 0.0) for r in mine)) for s in stage_names),
                key=lambda kv: -kv[1]))
            if kind == PIPELINE:
                run_s = statistics.median(r["phases"].get("pipeline_run_s", 0.0) for r in mine)
                stats["pipeline_run_s"] = run_s
                stats["interactions_per_s_pipeline_run_only"] = stats["ninteractions"] / run_s if run_s else None
            row[kind] = stats
        if PIPELINE in row and PANDAS in row:
            row["ratio_pipeline_over_pandas"] = {
                k: row[PIPELINE][k] / row[PANDAS][k] for k in ("wall_s", "cpu_s", "peak_rss_mb")
            }
        rows.append(row)
    return rows


def git_state() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "note": f"{REPO} is not a git checkout (see --note)"}
    return {"commit": commit,
            "uncommitted_in_measured_code": git("status", "--porcelain", "--", "preprocess", "schemas",
                                                "benchmarks/preprocess_pandas.py",
                                                "benchmarks/preprocess_pandas_ga4.py").splitlines()}


def plot(summary: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scales = [row["scale"] for row in summary]
    x = np.arange(len(scales))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    for offset, kind, color, label in ((-width / 2, PIPELINE, "#4C72B0", "Beam + tf.Transform (FnApiRunner)"),
                                       (width / 2, PANDAS, "#DD8452", "pandas + NumPy peer")):
        present = [i for i, row in enumerate(summary) if kind in row]
        if not present:
            continue
        walls = np.array([summary[i][kind]["wall_s"] for i in present])
        low = walls - np.array([summary[i][kind]["wall_s_min"] for i in present])
        high = np.array([summary[i][kind]["wall_s_max"] for i in present]) - walls
        bars = ax_t.bar(x[present] + offset, walls, width, yerr=[low, high], capsize=3, color=color, label=label)
        ax_t.bar_label(bars, labels=[f"{w:.1f} s" for w in walls], padding=2, fontsize=8)
        rss = np.array([summary[i][kind]["peak_rss_mb"] / 1024 for i in present])
        bars = ax_m.bar(x[present] + offset, rss, width, color=color, label=label)
        ax_m.bar_label(bars, labels=[f"{m:.2f}" for m in rss], padding=2, fontsize=8)
    labels = [f"×{s}\n{summary[i][PIPELINE if PIPELINE in summary[i] else PANDAS]['ninteractions']:,} interactions"
              for i, s in enumerate(scales)]
    for ax in (ax_t, ax_m):
        ax.set_xticks(x, labels, fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("wall time, s (median; bars: min–max; log scale)")
    ax_t.set_title("Wall time of the whole command", fontsize=10)
    ax_m.set_ylabel("peak RSS, GiB (median)")
    ax_m.set_title("Peak memory (process tree)", fontsize=10)
    ax_t.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_profile_text(report: dict, pstats_path: str, text_path: str, top: int) -> None:
    import pstats

    out = io.StringIO()
    out.write("Preprocessing pipeline under cProfile (one run; cProfile slows Python code, so the\n"
              "absolute times are inflated, the proportions are what matters).\n")
    out.write(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}  command: "
              f"python -m preprocess {' '.join(report['argv'])}\n")
    out.write(f"interactions: {report['ninteractions']:,}  wall: {report['wall_s']:.1f} s  "
              f"cpu: {report['cpu_s']:.1f} s  load before: {report['load_before'][0]:.2f}\n\n")
    out.write("Phases (s):\n")
    for name, seconds in report["phases"].items():
        out.write(f"  {name:28s} {seconds:8.2f}\n")
    msecs = report.get("transform_msecs", {})
    total = sum(msecs.values()) / 1000.0
    run_s = report["phases"].get("pipeline_run_s", 0.0)
    out.write(f"\nTime inside Beam transforms (state sampler, all bundles): {total:.1f} s of "
              f"{run_s:.1f} s in Pipeline.run; the rest ({run_s - total:.1f} s) is the runner itself "
              "(GroupByKey shuffles, data channels, scheduling, tf.Transform/TF setup outside DoFns).\n")
    out.write("\nBy stage (s):\n")
    for stage, seconds in stage_seconds(msecs).items():
        out.write(f"  {stage:70s} {seconds:8.2f}\n")
    out.write("\nTop steps (s):\n")
    for step, ms in sorted(msecs.items(), key=lambda kv: -kv[1])[:25]:
        out.write(f"  {step[:100]:100s} {ms / 1000.0:8.2f}\n")
    for order in ("cumulative", "tottime"):
        buffer = io.StringIO()
        stats = pstats.Stats(pstats_path, stream=buffer)
        stats.strip_dirs().sort_stats(order).print_stats(top)
        out.write(f"\n===== cProfile, top {top} by {order} =====\n")
        out.write(buffer.getvalue().split("\n", 1)[1] if "\n" in buffer.getvalue() else buffer.getvalue())
    with open(text_path, "w") as handle:
        handle.write(out.getvalue())


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--visitors_per_scale", type=int, default=BASE_VISITORS,
                   help="visitors at scale 1 (150,000 = the bundled sample; smaller for a smoke test)")
    p.add_argument("--data_dir", default=os.path.join(REPO, "data", "bench"))
    p.add_argument("--results_dir", default=None,
                   help=f"default {os.path.relpath(RESULTS, REPO)}; "
                        f"with --schema ga4 {os.path.relpath(GA4_RESULTS, REPO)}")
    p.add_argument("--profile", action="store_true", help="also run the pipeline once under cProfile")
    p.add_argument("--profile_top", type=int, default=45)
    p.add_argument("--only", choices=[PIPELINE, PANDAS], default=None, help="run one implementation only")
    p.add_argument("--schema", choices=["ga360", "ga4"], default="ga360",
                   help="ga4: the sample's GA4 events form, read by the pipeline (--input_format ga4_json, "
                        "--item_source event_param:article_id) and by the GA4 pandas peer "
                        "(benchmarks.preprocess_pandas_ga4): the same file for both")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. what code was measured)")
    p.add_argument("--child", nargs=2, metavar=("KIND", "REPORT"), help=argparse.SUPPRESS)
    p.add_argument("--child_profile", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child_module", default=PANDAS_MODULES["ga360"], help=argparse.SUPPRESS)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        child(args.child[0], args.child[1], rest, args.child_profile, args.child_module)
        return 0  # not reached: child() ends the process

    command = "python -m benchmarks.preprocess_speed " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.results_dir is None:
        args.results_dir = GA4_RESULTS if args.schema == "ga4" else RESULTS
    work_dir = os.path.join(args.data_dir, "runs")
    os.makedirs(work_dir, exist_ok=True)
    os.makedirs(args.results_dir, exist_ok=True)
    kinds = [args.only] if args.only else [PIPELINE, PANDAS]
    inputs = [ensure_input(scale, args.data_dir, args.visitors_per_scale, args.schema) for scale in args.scales]
    started = datetime.datetime.now().isoformat(timespec="seconds")
    host = machine()  # before the runs: its load average is the one they started under
    runs: list[dict] = []
    for info in inputs:
        print(f"scale ×{info['scale']}: {info['path']} ({info['sessions']:,} lines, "
              f"{info['bytes'] / 2**20:.0f} MiB)", flush=True)
        for repeat in range(args.repeats):  # both read the same file
            pair = {kind: one_run(kind, info, work_dir, repeat) for kind in kinds}
            runs.extend(pair.values())
            if len(pair) == 2:
                check_same(pair[PIPELINE], pair[PANDAS])
    result = {
        "benchmark": "preprocess_speed",
        "started": started,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "machine": host,
        "versions": versions(PIPELINE_PACKAGES),
        "git": git_state(),
        "note": args.note,
        "schema": args.schema,
        "implementations": {
            PIPELINE: {"module": PIPELINE_MODULE,
                       "argv": job_argv(PIPELINE, "INPUT", "OUT", "", args.schema)},
            PANDAS: {"module": PANDAS_MODULES[args.schema],
                     "argv": job_argv(PANDAS, "INPUT", "OUT", "STAGES", args.schema)},
            "input": "both read the same file per scale (the "
                     f"{'GA4 events' if args.schema == 'ga4' else 'GA360 sessions'} form, see inputs)",
        },
        "inputs": inputs,
        "notes": "wall_s = whole subprocess; peak_rss_mb = max(child VmHWM, polled process-tree RSS); "
                 "load_before/load_after = 1/5/15-min load averages (other jobs share the machine).",
        "summary": summarize(runs),
        "runs": runs,
    }
    if runs:
        json_path = os.path.join(args.results_dir, "preprocess_speed.json")
        with open(json_path, "w") as handle:
            json.dump(result, handle, indent=1)
        machine_text = f"{result['machine']['cpu_model']}, {result['machine']['cpus_usable']} cores"
        form = "GA4 events NDJSON (both read it)" if args.schema == "ga4" else "GA360 JSON"
        plot(result["summary"], os.path.join(args.results_dir, "preprocess_speed.png"),
             f"{form} → ratings + TFRecords, medians of {args.repeats} runs ({machine_text}; shared machine)")
        with open(os.path.join(args.results_dir, "preprocess_speed.md"), "w") as handle:
            handle.write(render_markdown(result))
        print_summary(result["summary"])
        print(f"wrote {json_path}, preprocess_speed.png and preprocess_speed.md", flush=True)
    if args.profile:
        info = inputs[0]
        pstats_path = os.path.join(work_dir, f"pipeline-x{info['scale']}.pstats")
        print(f"profiling the pipeline at scale ×{info['scale']} ...", flush=True)
        report = one_run(PIPELINE, info, work_dir, 0, profile_path=pstats_path)
        text_path = os.path.join(args.results_dir, "preprocess_profile.txt")
        write_profile_text(report, pstats_path, text_path, args.profile_top)
        print(f"wrote {text_path}", flush=True)
    return 0


def render_markdown(result: dict) -> str:
    """The summary as a Markdown table plus the pipeline's time by stage (medians)."""
    m = result["machine"]
    lines = [
        f"Measured {result['started'][:10]} on {m['cpu_model']} ({m['cpus_usable']} cores, "
        f"{m['memory_gib']} GiB), shared with other jobs (1-min load average before the runs: "
        f"{min(r['load_before'][0] for r in result['runs']):.1f}–{max(r['load_before'][0] for r in result['runs']):.1f}).",
        "",
        f"Both read the same file per scale ({'GA4 events' if result.get('schema') == 'ga4' else 'GA360 sessions'}); "
        f"the peer is `{result.get('implementations', {}).get(PANDAS, {}).get('module', PANDAS_MODULES['ga360'])}`.",
        "",
        "| input | implementation | wall s (median, min–max) | CPU s | interactions/s (wall) "
        "| peak RSS MiB | pipeline / pandas (wall, CPU, RSS) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    inputs = {i["scale"]: i for i in result["inputs"]}
    lines_are = "events" if result.get("schema") == "ga4" else "sessions"  # one JSON object a line
    for row in result["summary"]:
        info = inputs[row["scale"]]
        for kind, label in ((PIPELINE, "Beam + tf.Transform, FnApiRunner"), (PANDAS, "pandas + NumPy peer")):
            if kind not in row:
                continue
            s = row[kind]
            ratio = row.get("ratio_pipeline_over_pandas")
            ratio_text = (f"{ratio['wall_s']:.1f}× / {ratio['cpu_s']:.1f}× / {ratio['peak_rss_mb']:.2f}×"
                          if ratio and kind == PIPELINE else "")
            lines.append(
                f"| ×{row['scale']}: {info['visitors']:,} visitors, {info['sessions']:,} {lines_are}, "
                f"{info['bytes'] / 2**20:,.0f} MiB → {s['ninteractions']:,} interactions | {label} "
                f"| {s['wall_s']:.1f} ({s['wall_s_min']:.1f}–{s['wall_s_max']:.1f}) | {s['cpu_s']:.1f} "
                f"| {s['interactions_per_s']:,.0f} | {s['peak_rss_mb']:,.0f} | {ratio_text} |"
            )
    for row in result["summary"]:
        if PIPELINE not in row:
            continue
        s = row[PIPELINE]
        phases = s["phases_s"]
        inside = sum(s["stages_s"].values())
        run_s = phases.get("pipeline_run_s", 0.0)
        lines += [
            "",
            f"Pipeline at ×{row['scale']} (medians, s): imports {phases.get('import_s', 0):.1f}, graph construction "
            f"{phases.get('build_graph_s', 0):.1f}, Pipeline.run {run_s:.1f} (inside transforms {inside:.1f}, "
            f"runner/shuffle/setup {run_s - inside:.1f}), whole command {s['wall_s']:.1f}.",
            "",
            "| stage | s (median) | share of Pipeline.run |",
            "| --- | --- | --- |",
        ]
        for stage, seconds in s["stages_s"].items():
            if seconds >= 0.01 * inside:
                lines.append(f"| {stage} | {seconds:.1f} | {100 * seconds / run_s:.0f}% |")
    for row in result["summary"]:
        if PANDAS in row:
            s = row[PANDAS]
            stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in
                               [("imports (pandas, pyarrow)", s["phases_s"].get("import_s", 0.0)),
                                *s["stages_s"].items()] if seconds >= 0.05)
            lines += ["", f"pandas peer at ×{row['scale']} (medians, s): {stages}; whole command {s['wall_s']:.1f}."]
    return "\n".join(lines) + "\n"


def print_summary(summary: list[dict]) -> None:
    for row in summary:
        for kind in (PIPELINE, PANDAS):
            if kind in row:
                s = row[kind]
                print(f"×{row['scale']:<3d} {kind:8s} wall {s['wall_s']:7.1f} s  cpu {s['cpu_s']:7.1f} s  "
                      f"peak RSS {s['peak_rss_mb']:7.0f} MB  {s['interactions_per_s']:9.0f} interactions/s")
        if "ratio_pipeline_over_pandas" in row:
            r = row["ratio_pipeline_over_pandas"]
            print(f"      pipeline / pandas: wall {r['wall_s']:.1f}×  cpu {r['cpu_s']:.1f}×  "
                  f"peak RSS {r['peak_rss_mb']:.1f}×")


if __name__ == "__main__":
    sys.exit(main())
