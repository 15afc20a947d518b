"""run_training.sh --dry_run: the printed gcloud command is parsed and checked, and its --args
are accepted by the trainer's own argument parser."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import pathlib as _pathlib
import sys as _sys

# trainer_fixtures sits beside this file (importable with or without tests/__init__.py)
_sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent))

from trainer_fixtures import REPO

from trainer import task

SCRIPT = REPO / "run_training.sh"
BASE = ["--input_path", "gs://b/prep", "--output_dir", "gs://b/model", "--project", "proj-1"]


def _run(args, script=SCRIPT, env_extra=None):
    env = dict(os.environ, PYTHON=sys.executable, **(env_extra or {}))
    env.pop("GOOGLE_CLOUD_PROJECT", None)
    env["PATH"] = "/usr/bin:/bin"  # no gcloud: a dry run must not need it
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=120)


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _flags(cmd: list[str]) -> dict[str, str]:
    out = {}
    for a in cmd:
        if a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            out[k] = v
    return out


def test_dry_run_prints_the_vertex_command():
    p = _run([*BASE, "--package_uri", "gs://b/pkg/wals-0.1.tar.gz", "--job_name", "j1", "--dry_run",
              "--", "--num_epochs", "20", "--n_embeds", "64", "--predict_users_for_items"])
    assert p.returncode == 0, p.stderr
    cmds = _commands(p.stdout)
    assert len(cmds) == 1  # nothing to build or upload with --package_uri
    cmd = cmds[0]
    assert cmd[:4] == ["gcloud", "ai", "custom-jobs", "create"]
    f = _flags(cmd)
    assert f["--project"] == "proj-1" and f["--region"] == "us-central1"
    assert f["--display-name"] == "j1"
    assert f["--python-package-uris"] == "gs://b/pkg/wals-0.1.tar.gz"
    pool = dict(kv.split("=", 1) for kv in f["--worker-pool-spec"].split(","))
    assert pool == {
        "machine-type": "n1-standard-8",
        "replica-count": "1",
        "accelerator-type": "NVIDIA_TESLA_T4",
        "accelerator-count": "1",
        "executor-image-uri": "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest",
        "python-module": "trainer.task",
    }
    argv = f["--args"].split(",")
    args = task.parse_args(argv)  # the job's argv is valid for the trainer
    assert args.input_path == "gs://b/prep" and args.output_dir == "gs://b/model"
    assert args.num_epochs == 20 and args.n_embeds == 64 and args.predict_users_for_items
    assert "dry run" in p.stderr


def test_cpu_only_and_custom_image():
    p = _run([*BASE, "--package_uri", "gs://b/p.tar.gz", "--accelerator_count", "0",
              "--image", "us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest", "--dry_run"])
    assert p.returncode == 0, p.stderr
    pool = _flags(_commands(p.stdout)[0])["--worker-pool-spec"]
    assert "accelerator" not in pool and "tf-cpu.2-17" in pool


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--output_dir", "gs://b/m", "--project", "p"], "--input_path is required"),
        (["--input_path", "/local/prep", "--output_dir", "gs://b/m", "--project", "p"], "gs://"),
        ([*BASE, "--package_uri", "gs://x.tar.gz", "--", "--topk", "1,2"], "comma"),
        ([*BASE, "--package_uri", "gs://x.tar.gz", "--", "--output_dir", "gs://c"], "before --"),
        (["--input_path", "gs://b/p", "--output_dir", "gs://b/m"], "no project"),
        ([*BASE, "--bogus"], "unknown option"),
    ],
)
def test_bad_arguments(args, msg):
    p = _run([*args, "--dry_run"])
    assert p.returncode == 2
    assert msg in p.stderr


def test_dry_run_builds_the_sdist_and_prints_the_upload(tmp_path):
    """With a setup.py beside the script the sdist is built locally and the upload and job
    commands name it (a stand-in setup.py: the project's own is not this test's subject)."""
    shutil.copy(SCRIPT, tmp_path / "run_training.sh")
    (tmp_path / "setup.py").write_text(
        "from setuptools import setup\nsetup(name='demo-pkg', version='1.2.3', py_modules=[])\n"
    )
    p = _run([*BASE, "--job_name", "j2", "--dry_run"], script=tmp_path / "run_training.sh")
    assert p.returncode == 0, p.stderr
    cmds = _commands(p.stdout)
    assert cmds[0][1:3] == ["setup.py", "-q"] and "sdist" in cmds[0]
    assert cmds[1][:3] == ["gcloud", "storage", "cp"]
    name = os.path.basename(cmds[1][3])
    assert re.fullmatch(r"demo[-_]pkg-1\.2\.3\.tar\.gz", name), name  # setuptools may normalise "-"
    uri = f"gs://b/model/staging/j2/{name}"
    assert cmds[1][4] == uri
    assert _flags(cmds[2])["--python-package-uris"] == uri
