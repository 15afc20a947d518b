"""Shared fixtures: pipelines are expensive (TF + TFT), so each input is run once per session."""
from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

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


@pytest.fixture(scope="session")
def bundled_sample(tmp_path_factory) -> str:
    """The bundled GA360 sample, made by the project's seeded generator (default size)."""
    from preprocess.sample_data import write_sample

    return write_sample(str(tmp_path_factory.mktemp("sample") / "ga_sessions_sample.json"))


@pytest.fixture(scope="session")
def bundled_output(bundled_sample, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("bundled_out"))
    run_preprocess("--input", bundled_sample, "--input_format", "ga_json", "--output_dir", out)
    return out


@pytest.fixture(scope="session")
def shared_csv_output(tmp_path_factory) -> str:
    require_shared(SHARED_CSV)
    out = str(tmp_path_factory.mktemp("shared_csv_out"))
    run_preprocess("--input", str(SHARED_CSV), "--input_format", "hits_csv",
                   "--item_field", "productSKU", "--output_dir", out)
    return out
