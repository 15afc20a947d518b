"""Shared fixtures: pipelines are expensive (TF + TFT), so each input is run once per session.
Helpers the tests import live in modules (``tests/pipelines.py``, ``tests/processes.py``, ...)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# GPUs stay visible: the trainer's device-parametrised tests (tests/trainer_fixtures.py, `device`)
# run on every device TensorFlow sees. Allocate GPU memory as needed, not all of it up front, so
# that the trainers the tests start in subprocesses can share the device.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

from tests.pipelines import SHARED_CSV, require_shared, run_preprocess  # noqa: E402


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
