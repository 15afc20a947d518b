"""Command line: ``python -m preprocess [flags]`` (``--help`` lists them all).

Runs the pipeline, waits for it, writes ``metadata.json`` and prints a summary. The exit
status is 0 only when all of that succeeded; bad flags or input give one line and exit 2.

The output folder must be new, empty, or one this tool wrote before (it holds the marker
file ``OUTPUT_MARKER``): only then are an earlier run's outputs removed, so a user's own
files are never deleted. On Dataflow the job ID, its console URL and the final state are
printed. The process ends with ``os._exit`` so that a
crash in TensorFlow/Beam teardown at interpreter exit (seen after successful runs) cannot
turn a good run into a failure, and a failed run can never exit 0.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

from preprocess import metadata, pipeline, sources
from preprocess.options import PreprocessOptions, refuse_unknown_flags, validate
from schemas import contract
from schemas.contract import MetadataKey as K
from schemas.contract import OUTPUT_MARKER  # "this folder was written by python -m preprocess"

LOCAL_RUNNER = "FnApiRunner"


def _is_empty_folder(path: str) -> bool:
    """True when ``path`` does not exist or holds nothing; ``ValueError`` if it is a file."""
    if FileSystems.get_scheme(path) is None:  # a local path
        if not os.path.exists(path):
            return True
        if not os.path.isdir(path):
            raise ValueError(f"--output_dir {path} is a file, not a folder.")
        return not os.listdir(path)
    return not FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list


def prepare_output_dir(output_dir: str) -> None:
    """Claims ``output_dir`` for this run: refuses a non-empty folder this tool did not write,
    removes an earlier run's outputs from one it did, and (re)writes the marker."""
    marker = FileSystems.join(output_dir, OUTPUT_MARKER)
    if FileSystems.exists(marker):
        clear_previous_outputs(output_dir)
    elif not _is_empty_folder(output_dir):
        raise ValueError(
            f"--output_dir {output_dir} is not empty and holds no {OUTPUT_MARKER}, so this tool "
            "did not write it: choose a new or empty folder (nothing in it was changed)."
        )
    with FileSystems.create(marker) as handle:
        handle.write(json.dumps({
            "written_by": "python -m preprocess",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }).encode("utf-8"))


def clear_previous_outputs(output_dir: str) -> None:
    """Removes what an earlier run left, so no stale shard is picked up as ours."""
    patterns = [
        FileSystems.join(output_dir, f"{prefix}-*")
        for prefix in contract.SHARD_PREFIXES
    ] + [FileSystems.join(output_dir, name) for name in (contract.METADATA_FILE, contract.ITEM_DATES_FILE)]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    for folder in (contract.TRANSFORM_OUTPUT, contract.DROPPED_DIR, contract.STATS_DIR):
        path = FileSystems.join(output_dir, folder)
        if FileSystems.exists(path):
            stale.append(path)
    if stale:
        logging.info("Removing %d outputs of an earlier run in %s.", len(stale), output_dir)
        FileSystems.delete(stale)


def console_url(options: PreprocessOptions, job_id: str) -> str:
    """The Cloud Console page of a Dataflow job."""
    cloud = options.view_as(GoogleCloudOptions)
    return (f"https://console.cloud.google.com/dataflow/jobs/{cloud.region}/{job_id}"
            f"?project={cloud.project}")


def announce_job(result, options: PreprocessOptions) -> str:
    """Prints a Dataflow job's ID and console URL as soon as it is submitted; returns the
    " (Dataflow job ID)" suffix for later messages ("" on other runners)."""
    if "dataflow" not in str(options.view_as(StandardOptions).runner).lower():
        return ""
    job_id = result.job_id()
    print(f"preprocess: Dataflow job {job_id} submitted: {console_url(options, job_id)}", flush=True)
    return f" (Dataflow job {job_id})"


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Runs the job to completion and returns its metadata; raises on any failure."""
    argv = list(sys.argv[1:] if argv is None else argv)
    refuse_unknown_flags(argv)  # Beam would only warn and run with the defaults
    options = PreprocessOptions(argv)
    validate(options)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    if options.input:
        sources.matched_files(options.input)  # clear error for a missing or empty input
    prepare_output_dir(options.output_dir)

    p = beam.Pipeline(options=options)
    pipeline.build_pipeline(p, options)
    result = p.run()
    job = announce_job(result, options)
    state = result.wait_until_finish()
    print(f"preprocess: pipeline{job} finished in state {state}", flush=True)
    if state != beam.runners.runner.PipelineState.DONE:
        raise RuntimeError(f"Pipeline{job} ended in state {state}.")
    if not options.view_as(GoogleCloudOptions).temp_location:  # our own scratch folder
        scratch = pipeline.temp_dir(options)
        if FileSystems.exists(scratch):
            FileSystems.delete([scratch])
    meta = metadata.build_metadata(result, options)
    path = metadata.write_metadata(meta, options.output_dir)
    metadata.log_summary(meta)
    logging.info("Metadata: %s", path)
    print(
        f"preprocess: {meta[K.NINTERACTIONS]} interactions, {meta[K.NUSERS]} users, "
        f"{meta[K.NITEMS]} items -> {options.output_dir}",
        flush=True,
    )
    return meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Dataflow's own progress messages (worker startup, job state changes) stay visible.
    logging.getLogger("apache_beam.runners.dataflow").setLevel(logging.INFO)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        run(argv)
    except (ValueError, metadata.NoInteractionsError) as error:
        logging.error("%s", error)
        return 2
    except Exception:  # any other failure: show it, never exit 0
        logging.exception("Preprocessing failed.")
        return 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
