"""run_training.sh --dry_run: the printed gcloud command is parsed and checked, and its --args
are accepted by the trainer's own argument parser."""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile

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
    """With a setup.py beside the script the trainer-only sdist is built locally
    (GA_RECS_TRAINER_ONLY=1 reaches setup.py) and the upload and job commands name it. A
    stand-in setup.py; the project's own is checked below."""
    shutil.copy(SCRIPT, tmp_path / "run_training.sh")
    (tmp_path / "setup.py").write_text(
        "import os\nfrom setuptools import setup\n"
        "lean = os.environ.get('GA_RECS_TRAINER_ONLY') == '1'\n"
        "setup(name='demo-pkg' + ('-lean' if lean else ''), version='1.2.3', py_modules=[])\n"
    )
    p = _run([*BASE, "--job_name", "j2", "--dry_run"], script=tmp_path / "run_training.sh")
    assert p.returncode == 0, p.stderr
    cmds = _commands(p.stdout)
    assert cmds[0][:2] == ["env", "GA_RECS_TRAINER_ONLY=1"] and "sdist" in cmds[0]
    assert cmds[1][:3] == ["gcloud", "storage", "cp"]
    name = os.path.basename(cmds[1][3])
    assert re.fullmatch(r"demo[-_]pkg[-_]lean-1\.2\.3\.tar\.gz", name), name  # setuptools may normalise "-"
    uri = f"gs://b/model/staging/j2/{name}"
    assert cmds[1][4] == uri
    assert _flags(cmds[2])["--python-package-uris"] == uri
    assert not list(tmp_path.glob("*.egg-info")), "the build must not write into the work tree"


def _build_real_sdist(tmp_path) -> pathlib.Path:
    """Runs the build step run_training.sh prints, on the project's own setup.py."""
    p = _run([*BASE, "--job_name", "j3", "--dry_run"])
    assert p.returncode == 0, p.stderr
    build = _commands(p.stdout)[0]
    out = tmp_path / "dist"
    out.mkdir()
    # same command, with our output dirs instead of the script's (already deleted) temp dir
    i, j = build.index("--egg-base"), build.index("--dist-dir")
    build[i + 1] = build[j + 1] = str(out)
    subprocess.run(build, cwd=REPO, check=True, capture_output=True, timeout=120)
    (sdist,) = out.glob("*.tar.gz")
    return sdist


@pytest.mark.skipif(not (REPO / "setup.py").exists(), reason="no setup.py in this checkout")
def test_real_sdist_holds_the_trainer_without_the_pipeline(tmp_path):
    sdist = _build_real_sdist(tmp_path)
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"trainer/task.py", "trainer/wals.py", "schemas/records.py"} <= names
    assert not any(n.startswith("preprocess/") for n in names)


@pytest.mark.skipif(not (REPO / "setup.py").exists(), reason="no setup.py in this checkout")
def test_trainer_sdist_installs_without_pipeline_requirements(tmp_path):
    """What Vertex AI does with the package: pip builds and installs it with no special
    environment. The resulting requirements must not pull in Beam / tf.Transform or pin TF."""
    sdist = _build_real_sdist(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "GA_RECS_TRAINER_ONLY"}
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(sdist)],
        check=True, capture_output=True, env=env, timeout=180,
    )
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = next(z.read(n).decode() for n in z.namelist() if n.endswith("METADATA"))
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    bad = [r for r in requires if any(x in r for x in ("apache-beam", "tensorflow-transform", "tensorflow=="))]
    assert not bad, bad
