"""Helpers of the preprocessing tests: repository paths, the shared data files, running the
whole job in this process, and building its graph offline. Beam and pandas are imported where
used: ``conftest`` imports this module for every test, the trainer's included."""
from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import apache_beam as beam
    import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_CSV = SHARED_DATA / "ga_sessions_20170801.csv"


def require_shared(path: pathlib.Path) -> pathlib.Path:
    """``path`` under ``../shared``; skips the test when it is absent (a user's fresh clone
    has no ``../shared``), except under ``CI=true``, where CI always provides it."""
    if path.exists():
        return path
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"shared data file missing under CI: {path}")
    pytest.skip(f"needs the shared data file {path} (absent outside the project's CI)")


def run_preprocess(*argv: str) -> dict:
    """Runs the whole job in this process (FnApiRunner) and returns its metadata."""
    from preprocess.__main__ import run

    return run(["--runner", "FnApiRunner", *argv])


def shared_csv_hits() -> pd.DataFrame:
    """The shared real GA export's hits as ``visitorId, visitNumber, time, contentId``
    (``contentId`` = ``productSKU``)."""
    import pandas as pd

    raw = pd.read_csv(SHARED_CSV, dtype={"fullVisitorId": str, "productSKU": str})
    return raw.rename(columns={"fullVisitorId": "visitorId", "productSKU": "contentId"})[
        ["visitorId", "visitNumber", "time", "contentId"]
    ]


def offline_flags(tmp_path: pathlib.Path) -> list:
    """Flags that build the Cloud graph without touching the cloud (local temp and output)."""
    # The graph is the same for every runner; with --runner DataflowRunner or gs:// paths,
    # merely building it already talks to Cloud Storage (tf.Transform creates its temp folder).
    return ["--project", "my-project", "--region", "europe-west1",
            "--temp_location", str(tmp_path / "tmp"), "--output_dir", str(tmp_path / "out")]


def find_bigquery_reads(p: beam.Pipeline) -> list:
    """The ``ReadFromBigQuery`` transforms of a built (not run) pipeline."""
    import apache_beam as beam

    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            if isinstance(node.transform, beam.io.ReadFromBigQuery):
                found.append(node.transform)

    p.visit(Visitor())
    return found
