"""Command line: ``python -m preprocess [flags]`` (``--help`` lists them all).

Runs the pipeline, waits for it, writes ``metadata.json`` and prints a summary. The exit
status is 0 only when all of that succeeded. The process ends with ``os._exit`` so that a
crash in TensorFlow/Beam teardown at interpreter exit (seen after successful runs) cannot
turn a good run into a failure, and a failed run can never exit 0.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

from preprocess import metadata, pipeline, sources
from preprocess.options import PreprocessOptions, validate
from schemas import records as contract

LOCAL_RUNNER = "FnApiRunner"


def clear_previous_outputs(output_dir: str) -> None:
    """Removes what an earlier run left, so no stale shard is picked up as ours."""
    patterns = [
        FileSystems.join(output_dir, f"{prefix}-*")
        for prefix in (contract.USERS_FOR_ITEM, contract.ITEMS_FOR_USER, contract.TEST_ITEMS_FOR_USER)
    ] + [FileSystems.join(output_dir, contract.METADATA_FILE)]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    for folder in (pipeline.TRANSFORM_OUTPUT, pipeline.DROPPED_DIR, pipeline.STATS_DIR):
        path = FileSystems.join(output_dir, folder)
        if FileSystems.exists(path):
            stale.append(path)
    if stale:
        logging.info("Removing %d outputs of an earlier run in %s.", len(stale), output_dir)
        FileSystems.delete(stale)


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Runs the job to completion and returns its metadata; raises on any failure."""
    options = PreprocessOptions(argv)
    validate(options)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    if options.input:
        sources.matched_files(options.input)  # clear error for a missing or empty input
    clear_previous_outputs(options.output_dir)

    p = beam.Pipeline(options=options)
    pipeline.build_pipeline(p, options)
    result = p.run()
    state = result.wait_until_finish()
    if state != beam.runners.runner.PipelineState.DONE:
        raise RuntimeError(f"Pipeline ended in state {state}.")
    if not options.view_as(GoogleCloudOptions).temp_location:  # our own scratch folder
        scratch = pipeline.temp_dir(options)
        if FileSystems.exists(scratch):
            FileSystems.delete([scratch])
    meta = metadata.build_metadata(result, options)
    path = metadata.write_metadata(meta, options.output_dir)
    metadata.log_summary(meta)
    logging.info("Metadata: %s", path)
    print(
        f"preprocess: {meta['ninteractions']} interactions, {meta['nusers']} users, "
        f"{meta['nitems']} items -> {options.output_dir}",
        flush=True,
    )
    return meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
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
