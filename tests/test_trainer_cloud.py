"""run_training.sh and Dockerfile.trainer: the Vertex AI side, tested up to the network.

Oracles, all independent of the script: the trainer's own argument parser (``trainer.task``)
for the job's args; ``yaml.safe_load`` for the printed job spec; ``shlex`` for the printed
commands; and, where the Google Cloud CLI is installed, gcloud's own code: the real
``gcloud ai custom-jobs create`` command (its argument parser, its ``--config`` import into the
API's CustomJobSpec message, its validation) with only the final HTTP request replaced by a
capture. ``gcloud`` itself is replaced on PATH by a recorder, so these tests see every cloud
command the script would run, and that a dry run runs none.
"""
from __future__ import annotations

import ast
import json
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
import yaml



from tests.trainer_fixtures import REPO, random_ratings, write_dataset

from tests.processes import run_in_group
from trainer import task

SCRIPT = REPO / "run_training.sh"
DOCKERFILE = REPO / "Dockerfile.trainer"
IMAGE = "europe-docker.pkg.dev/proj-1/ml/wals-trainer:0.1.0"
PREBUILT = "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest"
BASE = ["--input_path", "gs://bkt/prep", "--output_dir", "gs://bkt/model", "--project", "proj-1"]


# ------------------------------------------------------------------------------ gcloud stand-in
# Records every call (argv; the --config file's text; the uploaded file) and, when a real
# Cloud SDK is known, hands `ai custom-jobs create` to gcloud's own code (GCLOUD_HARNESS).
FAKE_GCLOUD = r"""#!@PYTHON@
import json, os, shutil, subprocess, sys
argv = sys.argv[1:]
rec = {"argv": argv}
if argv[:3] in (["ai", "custom-jobs", "create"], ["ai", "hp-tuning-jobs", "create"]):
    cfg = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if cfg:
        with open(cfg[0], encoding="utf-8") as f:
            rec["config"] = f.read()
elif argv[:2] == ["storage", "cp"]:
    rec["uploaded"] = os.path.join(os.environ["FAKE_GCLOUD_DIR"], "uploaded-" + os.path.basename(argv[2]))
    shutil.copy(argv[2], rec["uploaded"])
with open(os.environ["FAKE_GCLOUD_LOG"], "a", encoding="utf-8") as f:
    f.write(json.dumps(rec) + "\n")
harness = os.environ.get("GCLOUD_HARNESS")
if harness and argv[:3] in (["ai", "custom-jobs", "create"], ["ai", "hp-tuning-jobs", "create"]):
    sys.exit(subprocess.call([os.environ["GCLOUD_PYTHON"], harness, *argv]))
"""

# The real gcloud CLI (gcloud_main, as bin/gcloud runs it), with two changes: the Vertex AI
# client is built without credentials or HTTP, and CustomJobsClient.Create, the one call that
# would reach the network, writes the request it would send to $CAPTURE instead.
GCLOUD_HARNESS = r"""
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["GCLOUD_SDK_ROOT"], "lib"))
import gcloud  # the SDK's lib/gcloud.py: puts its vendored third_party first on sys.path
gcloud._fix_google_module()
from apitools.base.protorpclite import messages
from apitools.base.py import encoding
from googlecloudsdk.api_lib.ai.custom_jobs import client


def unrecognized(msg, path):
    out = [path + "." + str(n) for n in msg.all_unrecognized_fields()]
    for field in msg.all_fields():
        value = msg.get_assigned_value(field.name)
        if isinstance(field, messages.MessageField) and value is not None:
            items = value if field.repeated else [value]
            for i, item in enumerate(items):
                out += unrecognized(item, f"{path}.{field.name}" + (f"[{i}]" if field.repeated else ""))
    return out


def create(self, parent, job_spec, display_name=None, kms_key_name=None, labels=None):
    with open(os.environ["CAPTURE"], "w", encoding="utf-8") as f:
        json.dump({"parent": parent, "displayName": display_name,
                   "jobSpec": encoding.MessageToDict(job_spec),
                   "unrecognized": unrecognized(job_spec, "jobSpec")}, f)
    return self.CustomJobMessage()(name=parent + "/customJobs/1", displayName=display_name)


client.CustomJobsClient.Create = create

# gcloud ai hp-tuning-jobs create: its client's one network call, the service's Create(request),
# writes the HyperparameterTuningJob it would send to $CAPTURE instead.
from googlecloudsdk.api_lib.ai.hp_tuning_jobs import client as hp_client


class _HpService:
    def __init__(self, owner):
        self.owner = owner

    def Create(self, request):
        job = (getattr(request, "googleCloudAiplatformV1HyperparameterTuningJob", None)
               or getattr(request, "googleCloudAiplatformV1beta1HyperparameterTuningJob", None))
        with open(os.environ["CAPTURE"], "w", encoding="utf-8") as f:
            json.dump({"parent": request.parent, "displayName": job.displayName,
                       "job": encoding.MessageToDict(job), "unrecognized": unrecognized(job, "job")}, f)
        return self.owner.HyperparameterTuningJobMessage()(
            name=request.parent + "/hyperparameterTuningJobs/1", displayName=job.displayName)


_hp_init = hp_client.HpTuningJobsClient.__init__


def _hp_init_capturing(self, *a, **kw):
    _hp_init(self, *a, **kw)
    self._service = _HpService(self)


hp_client.HpTuningJobsClient.__init__ = _hp_init_capturing
_client_instance = client.apis.GetClientInstance
client.apis.GetClientInstance = lambda name, version, no_http=False: _client_instance(name, version, no_http=True)
sys.argv[0] = "gcloud"
from googlecloudsdk import gcloud_main
sys.exit(gcloud_main.main())
"""


def _cloud_sdk() -> tuple[pathlib.Path, str] | None:
    """(SDK root, the Python gcloud runs with) of the installed Google Cloud CLI, or None."""
    exe = shutil.which("gcloud")
    if not exe:
        return None
    root = pathlib.Path(os.path.realpath(exe)).parents[1]
    if not (root / "lib" / "googlecloudsdk" / "gcloud_main.py").is_file():
        return None
    bundled = root / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = os.environ.get("CLOUDSDK_PYTHON") or (str(bundled) if bundled.exists() else shutil.which("python3"))
    return (root, python) if python else None


SDK = _cloud_sdk()


def _require_sdk():
    if SDK:
        return SDK
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail("the Google Cloud CLI (google-cloud-cli) is part of this machine image and missing under CI")
    pytest.skip("needs the Google Cloud CLI (google-cloud-cli) for gcloud's own parser")


class Cloud:
    """A run_training.sh runner with gcloud replaced by the recorder."""

    def __init__(self, tmp: pathlib.Path, with_gcloud_code: bool = False):
        self.dir = tmp / "fake-gcloud"
        (self.dir / "bin").mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "calls.jsonl"
        self.capture = self.dir / "capture.json"
        fake = self.dir / "bin" / "gcloud"
        fake.write_text(FAKE_GCLOUD.replace("@PYTHON@", sys.executable))
        fake.chmod(0o755)
        self.env = dict(os.environ, PYTHON=sys.executable, FAKE_GCLOUD_LOG=str(self.log),
                        FAKE_GCLOUD_DIR=str(self.dir), PATH=f"{self.dir / 'bin'}:/usr/bin:/bin")
        self.env.pop("GOOGLE_CLOUD_PROJECT", None)
        self.env.pop("PROJECT", None)
        self.env.pop("REGION", None)
        if with_gcloud_code:
            root, python = _require_sdk()
            harness = self.dir / "gcloud_harness.py"
            harness.write_text(GCLOUD_HARNESS)
            self.env.update(self.gcloud_env(root, python), GCLOUD_HARNESS=str(harness))

    def gcloud_env(self, root, python) -> dict:
        config = self.dir / "gcloud-config"
        config.mkdir(exist_ok=True)
        return {"GCLOUD_SDK_ROOT": str(root), "GCLOUD_PYTHON": python, "CAPTURE": str(self.capture),
                "CLOUDSDK_CONFIG": str(config), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
                "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
                "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true"}

    def run(self, args, script=SCRIPT, **env) -> subprocess.CompletedProcess:
        return run_in_group(["bash", str(script), *args], 300, env={**self.env, **env}, cwd=self.dir)

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]

    def cloud_calls(self) -> list[dict]:
        """Calls that upload or submit (not `gcloud config get-value`)."""
        return [c for c in self.calls() if c["argv"][:1] != ["config"]]

    def gcloud_create(self, argv: list[str], spec_text: str) -> tuple[subprocess.CompletedProcess, dict | None]:
        """Runs `gcloud ARGV` through gcloud's own code with --config replaced by a file holding
        spec_text; returns the process and the request it would have sent."""
        root, python = _require_sdk()
        harness = self.dir / "gcloud_harness.py"
        harness.write_text(GCLOUD_HARNESS)
        spec = self.dir / "printed-spec.yaml"
        spec.write_text(spec_text, encoding="utf-8")
        argv = [f"--config={spec}" if a.startswith("--config=") else a for a in argv]
        if self.capture.exists():
            self.capture.unlink()
        p = subprocess.run([python, str(harness), *argv], capture_output=True, text=True, timeout=300,
                           env={**os.environ, **self.gcloud_env(root, python)}, cwd=self.dir)
        return p, (json.loads(self.capture.read_text()) if self.capture.exists() else None)


@pytest.fixture
def cloud(tmp_path) -> Cloud:
    return Cloud(tmp_path)


# ------------------------------------------------------------------------------ output parsers
def commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def printed_spec(stdout: str) -> str:
    """The job spec block: the lines after '# FILE (the job spec given to --config):' up to the
    next printed command."""
    lines = stdout.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith("# ") and "job spec" in line]
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("+ ")), len(lines))
    return "\n".join(lines[start + 1:end]) + "\n"


def flags(cmd: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in cmd if a.startswith("--") and "=" in a)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def job_pool(spec: dict) -> dict:
    assert list(spec) == ["workerPoolSpecs"]
    (pool,) = spec["workerPoolSpecs"]
    return pool


# ------------------------------------------------------------------------------ custom container
def test_dry_run_custom_container(cloud):
    """The default path: our image as a custom container. `--dry_run` after `--` (the reported
    bug) is a dry run too and does not reach the trainer."""
    p = cloud.run([*BASE, "--image", IMAGE, "--job_name", "j1", "--region", "europe-west4",
                   "--", "--num_epochs", "20", "--dry_run", "--n_embeds", "64", "--predict_users_for_items"])
    assert p.returncode == 0, p.stderr
    assert cloud.cloud_calls() == [], "a dry run must not run gcloud"
    assert "dry run: nothing was uploaded or submitted" in p.stderr
    (cmd,) = commands(p.stdout)  # no build, no upload: the image holds the trainer
    assert cmd[:4] == ["gcloud", "ai", "custom-jobs", "create"]
    f = flags(cmd)
    assert (f["--project"], f["--region"], f["--display-name"]) == ("proj-1", "europe-west4", "j1")
    assert f["--config"].endswith(".yaml")
    pool = job_pool(yaml.safe_load(printed_spec(p.stdout)))
    assert pool["machineSpec"] == {"machineType": "n1-standard-8", "acceleratorType": "NVIDIA_TESLA_T4",
                                   "acceleratorCount": 1}
    assert pool["replicaCount"] == 1
    assert set(pool) == {"machineSpec", "replicaCount", "containerSpec"}
    assert set(pool["containerSpec"]) == {"imageUri", "args"}  # command: the image's ENTRYPOINT
    assert pool["containerSpec"]["imageUri"] == IMAGE
    argv = pool["containerSpec"]["args"]
    assert "--dry_run" not in argv
    args = task.parse_args(argv)  # the job's argv is valid for the trainer
    assert (args.input_path, args.output_dir) == ("gs://bkt/prep", "gs://bkt/model")
    assert args.num_epochs == 20 and args.n_embeds == 64 and args.predict_users_for_items
    assert not args.progress


def test_dry_run_output_is_accepted_by_gcloud(cloud):
    """The printed command and spec, given to gcloud's own `ai custom-jobs create`."""
    p = cloud.run([*BASE, "--image", IMAGE, "--job_name", "j1", "--dry_run", "--", "--topk", "5"])
    assert p.returncode == 0, p.stderr
    (cmd,) = commands(p.stdout)
    g, sent = cloud.gcloud_create(cmd[1:], printed_spec(p.stdout))
    assert g.returncode == 0, g.stderr
    assert sent["parent"] == "projects/proj-1/locations/us-central1" and sent["displayName"] == "j1"
    assert sent["unrecognized"] == []
    (pool,) = sent["jobSpec"]["workerPoolSpecs"]
    assert pool["containerSpec"] == {"imageUri": IMAGE, "args": ["--input_path=gs://bkt/prep",
                                     "--output_dir=gs://bkt/model", "--no_progress", "--topk", "5"]}
    assert pool["machineSpec"]["acceleratorType"] == "NVIDIA_TESLA_T4"
    assert int(pool["replicaCount"]) == 1


def test_gcloud_harness_can_fail(cloud):
    """The gcloud oracle rejects what the API would reject: an unknown flag, a spec with no
    container, a misspelt field (reported as unrecognized)."""
    p = cloud.run([*BASE, "--image", IMAGE, "--dry_run"])
    (cmd,) = commands(p.stdout)
    spec = printed_spec(p.stdout)
    g, _ = cloud.gcloud_create([*cmd[1:], "--bogus-flag"], spec)
    assert g.returncode == 2 and "unrecognized arguments" in g.stderr
    g, _ = cloud.gcloud_create(cmd[1:], spec.replace("containerSpec", "containerSpek"))
    assert g.returncode != 0
    g, sent = cloud.gcloud_create(cmd[1:], spec.replace("imageUri", "imageUri2: \"x\"\n    imageUri"))
    assert g.returncode == 0 and sent["unrecognized"] == ["jobSpec.workerPoolSpecs[0].containerSpec.imageUri2"]


def test_submission_goes_through_gclouds_parser(tmp_path):
    """Not a dry run: the script runs `gcloud ai custom-jobs create --config FILE`, here gcloud's
    own code up to the HTTP request. The request holds exactly the printed spec."""
    cloud = Cloud(tmp_path, with_gcloud_code=True)
    p = cloud.run([*BASE, "--image", IMAGE, "--job_name", "j9", "--region", "europe-west4",
                   "--accelerator_count", "2", "--machine_type", "n1-standard-16", "--", "--num_epochs", "3"])
    assert p.returncode == 0, p.stderr
    assert "is submitted successfully" in p.stdout + p.stderr
    (call,) = cloud.cloud_calls()
    assert call["argv"][:3] == ["ai", "custom-jobs", "create"]
    assert call["config"] == printed_spec(p.stdout)
    sent = json.loads(cloud.capture.read_text())
    assert sent["parent"] == "projects/proj-1/locations/europe-west4" and sent["displayName"] == "j9"
    assert sent["unrecognized"] == []
    (pool,) = sent["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "n1-standard-16", "acceleratorType": "NVIDIA_TESLA_T4",
                                   "acceleratorCount": 2}
    assert task.parse_args(pool["containerSpec"]["args"]).num_epochs == 3
    assert not list(pathlib.Path(call["argv"][-1].split("=", 1)[1]).parent.glob("*")), "temp files left"


def test_any_character_survives(cloud):
    """Commas (gcloud's list separator), quotes, backslashes, YAML syntax, tabs, non-ASCII: the
    job's args are exactly what was given, for YAML, for gcloud and for the trainer."""
    nasty_in = "gs://bkt/prep,v2/a b/ü-✓/x#y: z"
    nasty_out = 'gs://bkt/model/"q",\'s\'\\back/- [x] {y} &a *b !c %d @e `f` |g >h'
    tb = "gs://bkt/tb,1/\t/😀/\u2028/ \x7f end "
    p = cloud.run(["--input_path", nasty_in, "--output_dir", nasty_out, "--project", "proj-1",
                   "--image", IMAGE, "--dry_run", "--", "--tensorboard_dir", tb, "--seed=3"])
    assert p.returncode == 0, p.stderr
    spec_text = printed_spec(p.stdout)
    expected = [f"--input_path={nasty_in}", f"--output_dir={nasty_out}", "--no_progress",
                "--tensorboard_dir", tb, "--seed=3"]
    assert job_pool(yaml.safe_load(spec_text))["containerSpec"]["args"] == expected
    args = task.parse_args(expected)
    assert (args.input_path, args.output_dir, args.tensorboard_dir, args.seed) == (nasty_in, nasty_out, tb, 3)
    if SDK:
        (cmd,) = commands(p.stdout)
        g, sent = cloud.gcloud_create(cmd[1:], spec_text)
        assert g.returncode == 0, g.stderr
        assert sent["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"] == expected


@pytest.mark.parametrize("count", ["0", "1", "4"])
def test_accelerator_count(cloud, count):
    p = cloud.run([*BASE, "--image", IMAGE, f"--accelerator_count={count}", "--accelerator_type", "NVIDIA_L4",
                   "--dry_run"])
    assert p.returncode == 0, p.stderr
    machine = job_pool(yaml.safe_load(printed_spec(p.stdout)))["machineSpec"]
    if count == "0":  # CPU only: no accelerator at all
        assert machine == {"machineType": "n1-standard-8"}
    else:
        assert machine == {"machineType": "n1-standard-8", "acceleratorType": "NVIDIA_L4",
                           "acceleratorCount": int(count)}


# ------------------------------------------------------------------------------ dry run anywhere
@pytest.mark.parametrize("where", ["first", "middle", "last_option", "after_dashes", "end"])
@pytest.mark.parametrize("kind", ["image", "prebuilt"])
def test_dry_run_anywhere_uploads_and_submits_nothing(cloud, where, kind):
    opts = [*BASE, *(["--image", IMAGE] if kind == "image" else ["--prebuilt_image", PREBUILT])]
    trainer = ["--num_epochs", "2"]
    argv = {
        "first": ["--dry_run", *opts, "--", *trainer],
        "middle": [*opts[:2], "--dry_run", *opts[2:], "--", *trainer],
        "last_option": [*opts, "--dry_run", "--", *trainer],
        "after_dashes": [*opts, "--", "--dry_run", *trainer],
        "end": [*opts, "--", *trainer, "--dry_run"],
    }[where]
    p = cloud.run(argv)
    assert p.returncode == 0, p.stderr
    assert cloud.cloud_calls() == []
    args = job_pool(yaml.safe_load(printed_spec(p.stdout)))
    args = args.get("containerSpec", args.get("pythonPackageSpec"))["args"]
    assert args[3:] == trainer  # --dry_run never reaches the trainer


# ------------------------------------------------------------------------------ refused input
def _trainer_refuses(flags_: list[str]) -> bool:
    """The oracle: the trainer's own command line, in a fresh process, exits 2 on these flags."""
    p = subprocess.run([sys.executable, "-m", "trainer.task", "--input_path", "gs://bkt/prep",
                        "--output_dir", "gs://bkt/model", *flags_], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    return p.returncode == 2


@pytest.mark.parametrize("kind", ["image", "prebuilt"])
@pytest.mark.parametrize(
    "trainer_flags,msg",
    [
        (["--num_epochs", "x"], "invalid int value: 'x'"),
        (["--bogus_flag"], "unrecognized arguments: --bogus_flag"),
        (["--objective", "als"], "invalid choice: 'als'"),
        (["--n_embeds", "0"], "--n_embeds must be >= 1"),
        (["--regularization", "-1"], "--regularization must be > 0"),
        (["--topk", "1,2"], "invalid int value: '1,2'"),
    ],
)
def test_bad_trainer_flags_refused_before_anything(cloud, kind, trainer_flags, msg):
    assert _trainer_refuses(trainer_flags)
    image = ["--image", IMAGE] if kind == "image" else ["--prebuilt_image", PREBUILT]
    p = cloud.run([*BASE, *image, "--", *trainer_flags])  # not a dry run
    assert p.returncode == 2
    line = one_line(p.stderr)
    assert line.startswith("run_training.sh: bad trainer flags:") and msg in line
    assert cloud.cloud_calls() == [] and commands(p.stdout) == []  # nothing built, uploaded, submitted


@pytest.mark.parametrize("trainer_flags", [["--output_dir", "gs://c/x"], ["--output_dir=gs://c/x"],
                                           ["--input_path", "gs://c/x"]])
def test_trainer_flags_may_not_replace_the_paths(cloud, trainer_flags):
    assert task.parse_args(["--input_path", "a", "--output_dir", "b", *trainer_flags])  # the trainer takes them
    p = cloud.run([*BASE, "--image", IMAGE, "--", *trainer_flags])
    assert p.returncode == 2 and "--input_path/--output_dir" in one_line(p.stderr)
    assert cloud.cloud_calls() == []


@pytest.mark.parametrize("trainer_flags", [["--out", "gs://c/x"], ["--input", "gs://c/x"], ["--num_epoch", "3"]])
def test_shortened_trainer_flags_are_refused(cloud, trainer_flags):
    """The trainer's parser takes no abbreviations (--out is not --output_dir)."""
    with pytest.raises(SystemExit) as stop:
        task.parse_args(["--input_path", "a", "--output_dir", "b", *trainer_flags])
    assert stop.value.code == 2
    p = cloud.run([*BASE, "--image", IMAGE, "--", *trainer_flags])
    assert p.returncode == 2 and "unrecognized arguments" in one_line(p.stderr)
    assert cloud.cloud_calls() == []


def test_script_help(cloud):
    p = cloud.run(["--help", *BASE])
    assert p.returncode == 0 and p.stdout.startswith("Submit the WALS trainer")
    assert "--prebuilt_image URI" in p.stdout and "set -euo" not in p.stdout
    assert cloud.cloud_calls() == []


def test_trainer_help_submits_nothing(cloud):
    p = cloud.run([*BASE, "--image", IMAGE, "--", "--help"])
    assert p.returncode == 0
    assert "usage: python -m trainer.task" in p.stdout and "nothing was submitted" in p.stderr
    assert cloud.cloud_calls() == [] and commands(p.stdout) == []


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--output_dir", "gs://bkt/m", "--project", "proj-1", "--image", IMAGE], "--input_path is required"),
        (["--input_path", "/local/prep", "--output_dir", "gs://bkt/m", "--project", "proj-1", "--image", IMAGE],
         "--input_path must be a gs://"),
        (["--input_path", "gs://b/prep", "--output_dir", "gs://bkt/m", "--project", "proj-1", "--image", IMAGE],
         "--input_path must be a gs://BUCKET"),  # a one-letter bucket cannot exist
        (["--input_path", "gs://bkt/p", "--output_dir", "gs://bkt/m", "--image", IMAGE], "no project"),
        ([*BASE], "no trainer image"),
        ([*BASE, "--image", IMAGE, "--prebuilt_image", PREBUILT], "not both"),
        ([*BASE, "--prebuilt_image"], "--prebuilt_image needs a value"),
        ([*BASE, "--image"], "--image needs a value"),
        ([*BASE, "--image", "--accelerator_count", "1"], "--image needs a value"),
        ([*BASE, "--image="], "--image needs a value"),
        ([*BASE, "--image", "not an image"], "not a container image URI"),
        ([*BASE, "--image", "gs://bkt/image.tar"], "not a container image URI"),
        ([*BASE, "--image", IMAGE, "--staging", "gs://bkt/s"], "--staging is only used with --prebuilt_image"),
        ([*BASE, "--image", IMAGE, "--package_uri", "gs://bkt/p.tar.gz"], "--package_uri is only used"),
        ([*BASE, "--prebuilt_image", PREBUILT, "--package_uri", "gs://bkt/p.zip"], "--package_uri must be"),
        ([*BASE, "--prebuilt_image", PREBUILT, "--staging", "/tmp/s"], "--staging must be a gs://"),
        ([*BASE, "--image", IMAGE, "--accelerator_count", "-1"], "non-negative integer"),
        ([*BASE, "--image", IMAGE, "--accelerator_count", "1.5"], "non-negative integer"),
        ([*BASE, "--image", IMAGE, "--accelerator_count", "two"], "non-negative integer"),
        ([*BASE, "--image", IMAGE, "--accelerator_count", "01"], "non-negative integer"),
        ([*BASE, "--image", IMAGE, "--accelerator_count=99999"], "non-negative integer"),
        ([*BASE, "--image", IMAGE, "--accelerator_type", "nvidia t4"], "--accelerator_type"),
        ([*BASE, "--image", IMAGE, "--region", "us central1"], "--region"),
        ([*BASE, "--image", IMAGE, "--machine_type", "N1_STANDARD"], "--machine_type"),
        ([*BASE, "--image", IMAGE, "--job_name", "my job"], "--job_name"),
        ([*BASE, "--image", IMAGE, "--project", "Proj_1"], "not a Google Cloud project ID"),
        ([*BASE, "--image", IMAGE, "--bogus"], "unknown option --bogus"),
        ([*BASE, "--image", IMAGE, "--", "--output_dir", "gs://c"], "before --"),
        (["--input_path", "gs://bkt/p\nx", "--output_dir", "gs://bkt/m", "--project", "proj-1", "--image", IMAGE],
         "control characters"),
    ],
)
def test_bad_arguments(cloud, args, msg):
    p = cloud.run(args)  # not a dry run: refused before anything happens
    assert p.returncode == 2, p.stdout + p.stderr
    assert msg in one_line(p.stderr)
    assert cloud.cloud_calls() == [] and commands(p.stdout) == []


def test_works_with_a_python_without_numpy(cloud):
    """Only Python + setuptools are needed to submit (the system python3 has no NumPy): the
    flags are checked by trainer.flags, which imports the standard library only."""
    py = "/usr/bin/python3"
    if not os.path.exists(py) or subprocess.run([py, "-c", "import numpy"], capture_output=True).returncode == 0:
        pytest.skip("needs a python3 without NumPy at /usr/bin/python3")
    ok = cloud.run([*BASE, "--image", IMAGE, "--dry_run", "--", "--n_embeds", "8"], PYTHON=py)
    assert ok.returncode == 0, ok.stderr
    assert task.parse_args(job_pool(yaml.safe_load(printed_spec(ok.stdout)))["containerSpec"]["args"]).n_embeds == 8
    bad = cloud.run([*BASE, "--image", IMAGE, "--dry_run", "--", "--n_embeds", "eight"], PYTHON=py)
    assert bad.returncode == 2 and "invalid int value: 'eight'" in one_line(bad.stderr)


# ------------------------------------------------------------------------------ prebuilt image
def test_prebuilt_image_with_an_uploaded_package(cloud):
    p = cloud.run([*BASE, "--prebuilt_image", PREBUILT, "--package_uri", "gs://bkt/pkg/wals-0.1.tar.gz",
                   "--job_name", "j1", "--dry_run", "--", "--n_embeds", "64"])
    assert p.returncode == 0, p.stderr
    (cmd,) = commands(p.stdout)  # nothing to build or upload with --package_uri
    assert cmd[:4] == ["gcloud", "ai", "custom-jobs", "create"]
    pool = job_pool(yaml.safe_load(printed_spec(p.stdout)))
    assert set(pool) == {"machineSpec", "replicaCount", "pythonPackageSpec"}
    spec = pool["pythonPackageSpec"]
    assert spec["executorImageUri"] == PREBUILT and spec["packageUris"] == ["gs://bkt/pkg/wals-0.1.tar.gz"]
    assert spec["pythonModule"] == "trainer.task"
    assert task.parse_args(spec["args"]).n_embeds == 64
    # TF 2.17 is the newest TensorFlow training image Vertex AI lists; it is past its end of availability.
    assert "end of availability" in p.stderr
    if SDK:
        g, sent = cloud.gcloud_create(cmd[1:], printed_spec(p.stdout))
        assert g.returncode == 0, g.stderr
        assert sent["unrecognized"] == []
        assert sent["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"] == spec


def _stand_in_repo(tmp_path) -> pathlib.Path:
    """A copy of the script beside a stand-in setup.py (and the real trainer, for the flag check)."""
    d = tmp_path / "repo"
    d.mkdir()
    shutil.copy(SCRIPT, d / "run_training.sh")
    (d / "trainer").symlink_to(REPO / "trainer")
    (d / "schemas").symlink_to(REPO / "schemas")
    (d / "setup.py").write_text(
        "import os\nfrom setuptools import setup\n"
        "lean = os.environ.get('GA_RECS_TRAINER_ONLY') == '1'\n"
        "setup(name='demo-pkg' + ('-lean' if lean else ''), version='1.2.3', py_modules=[])\n"
    )
    return d


def test_prebuilt_dry_run_builds_the_sdist_and_prints_the_upload(cloud, tmp_path):
    """The trainer-only sdist is built locally (GA_RECS_TRAINER_ONLY=1 reaches setup.py) and
    the upload and the job spec name it. A stand-in setup.py; the project's own is checked below."""
    d = _stand_in_repo(tmp_path)
    p = cloud.run([*BASE, "--prebuilt_image", PREBUILT, "--job_name", "j2", "--dry_run"],
                  script=d / "run_training.sh")
    assert p.returncode == 0, p.stderr
    assert cloud.cloud_calls() == []
    cmds = commands(p.stdout)
    assert cmds[0][:2] == ["env", "GA_RECS_TRAINER_ONLY=1"] and "sdist" in cmds[0]
    assert cmds[1][:3] == ["gcloud", "storage", "cp"]
    name = os.path.basename(cmds[1][3])
    assert re.fullmatch(r"demo[-_]pkg[-_]lean-1\.2\.3\.tar\.gz", name), name  # setuptools may normalise "-"
    uri = f"gs://bkt/model/staging/j2/{name}"
    assert cmds[1][4] == uri
    assert cmds[2][:4] == ["gcloud", "ai", "custom-jobs", "create"]
    assert job_pool(yaml.safe_load(printed_spec(p.stdout)))["pythonPackageSpec"]["packageUris"] == [uri]
    assert not list(d.glob("*.egg-info")), "the build must not write into the work tree"


def test_prebuilt_submission_uploads_then_submits(tmp_path):
    """Not a dry run, stand-in setup.py: the sdist is uploaded first, then the job (through
    gcloud's own code) names the uploaded URI."""
    cloud = Cloud(tmp_path, with_gcloud_code=True)
    d = _stand_in_repo(tmp_path)
    p = cloud.run([*BASE, "--prebuilt_image", PREBUILT, "--job_name", "j3", "--staging", "gs://bkt/stg/"],
                  script=d / "run_training.sh")
    assert p.returncode == 0, p.stderr
    cp, create = cloud.cloud_calls()
    assert cp["argv"][:2] == ["storage", "cp"] and create["argv"][:3] == ["ai", "custom-jobs", "create"]
    uri = cp["argv"][3]
    assert uri.startswith("gs://bkt/stg/j3/") and tarfile.is_tarfile(cp["uploaded"])
    sent = json.loads(cloud.capture.read_text())
    spec = sent["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"]
    assert spec["packageUris"] == [uri] and spec["executorImageUri"] == PREBUILT
    assert sent["unrecognized"] == []


def _build_real_sdist(tmp_path) -> pathlib.Path:
    """Runs the build step run_training.sh prints, on the project's own setup.py."""
    p = Cloud(tmp_path).run([*BASE, "--prebuilt_image", PREBUILT, "--job_name", "j3", "--dry_run"])
    assert p.returncode == 0, p.stderr
    build = commands(p.stdout)[0]
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


def _lean_requirements(wheel: pathlib.Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(z.read(n).decode() for n in z.namelist() if n.endswith("METADATA"))
    return [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]


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
    requires = _lean_requirements(wheel)
    bad = [r for r in requires if any(x in r for x in ("apache-beam", "tensorflow-transform", "tensorflow=="))]
    assert not bad, bad


# ------------------------------------------------------------------------------ Dockerfile.trainer
def _instructions(path: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _pipeline_tf_pin() -> str:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PIPELINE_REQUIRES" for t in node.targets):
            (pin,) = [e.value for e in node.value.elts if e.value.startswith("tensorflow==")]
            return pin.split("==")[1]
    raise AssertionError("no tensorflow pin in setup.py")


def test_dockerfile_is_lean_tf_gpu_with_the_trainer_entrypoint():
    ins = _instructions(DOCKERFILE)
    assert ins[0][0] == "FROM" and ins[0][1].startswith("python:3.11-slim")
    runs = " ".join(a for i, a in ins if i == "RUN")
    (tf_req,) = re.findall(r"tensorflow\[and-cuda\]==([0-9.]+)", runs)
    assert tf_req == _pipeline_tf_pin() == "2.21.0"
    for heavy in ("apache-beam", "apache_beam", "tensorflow-transform", "tensorflow_transform", "tfx"):
        assert heavy not in runs
    copies = [a.split() for i, a in ins if i == "COPY"]
    assert sorted(src for src, _ in copies) == ["schemas", "setup.py", "trainer"]  # never preprocess/
    (entry,) = [a for i, a in ins if i == "ENTRYPOINT"]
    assert json.loads(entry) == ["python", "-m", "trainer.task"]
    assert not [a for i, a in ins if i == "CMD"]  # the job's args are the whole command line


def test_dockerignore_keeps_what_the_dockerfiles_copy():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for dockerfile in (DOCKERFILE, REPO / "Dockerfile"):
        for i, a in _instructions(dockerfile):
            if i == "COPY":
                src = a.split()[0]
                assert src not in patterns and src.split("/")[0] not in patterns, (dockerfile.name, src)
    assert ".venv" in patterns and ".git" in patterns


def test_image_contents_run_the_trainer_without_beam(tmp_path):
    """The image's build, minus the base: the files Dockerfile.trainer COPYs, installed by its
    pip step (no Beam, no tf.Transform required), then its ENTRYPOINT, `python -m trainer.task`,
    trains on a small data set with apache_beam / tensorflow_transform made unimportable."""
    ins = _instructions(DOCKERFILE)
    ctx = tmp_path / "context"
    ctx.mkdir()
    for i, a in ins:
        if i == "COPY":
            src, dst = a.split()
            (shutil.copytree if (REPO / src).is_dir() else shutil.copy)(REPO / src, ctx / dst)
    (install,) = [a for i, a in ins if i == "RUN" and "pip install ." in a]
    assert install.startswith("GA_RECS_TRAINER_ONLY=1 pip install .")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ctx)], check=True, capture_output=True, timeout=180,
                   env=dict(os.environ, GA_RECS_TRAINER_ONLY="1"))
    (wheel,) = wheels.glob("*.whl")
    # NumPy, and Numba for the CPU backend (trainer/cpu_cg.py): nothing of Beam or tf.Transform
    assert [r.split()[1] for r in _lean_requirements(wheel)] == ["numpy<3,>=1.26", "numba>=0.60"]
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=180)
    data = write_dataset(tmp_path / "prep", random_ratings(30, 12, 0.3, 7))
    out = tmp_path / "model"
    entrypoint = json.loads([a for i, a in ins if i == "ENTRYPOINT"][0])
    assert entrypoint[:2] == ["python", "-m"]
    runner = (
        "import importlib.abc, runpy, sys\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('apache_beam', 'tensorflow_transform', 'tfx_bsl', 'preprocess'):\n"
        "            raise ImportError('not in the trainer image: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import trainer\n"
        f"assert trainer.__file__.startswith({str(site)!r}), trainer.__file__\n"
        "sys.argv = ['trainer.task', *sys.argv[1:]]\n"
        f"runpy.run_module({entrypoint[2]!r}, run_name='__main__', alter_sys=True)\n"
    )
    empty = tmp_path / "workspace"
    empty.mkdir()
    p = subprocess.run([sys.executable, "-I", "-c", runner, "--input_path", str(data), "--output_dir", str(out),
                        "--num_epochs", "2", "--n_embeds", "3", "--no_export", "--no_progress"],
                       cwd=empty, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "batch_pred.txt").read_text().count("\n") == 30
    assert json.loads((out / "training_summary.json").read_text())


@pytest.mark.skipif(os.environ.get("WALS_NETWORK_TESTS") != "1", reason="asks PyPI; set WALS_NETWORK_TESTS=1")
def test_dockerfile_requirements_resolve_on_pypi(tmp_path):
    """pip resolves the image's TensorFlow requirement for its platform (CPython 3.11, glibc
    2.36 of Debian bookworm) from package metadata, without downloading the wheels."""
    (req,) = re.findall(r'pip install "([^"]+)"', DOCKERFILE.read_text())
    platforms = [f"--platform={t}_x86_64" for t in ("manylinux_2_36", "manylinux_2_35", "manylinux_2_34",
                                                     "manylinux_2_28", "manylinux_2_27", "manylinux_2_17",
                                                     "manylinux2014")]
    report = tmp_path / "report.json"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--only-binary=:all:", *platforms, "--python-version=3.11", "--implementation=cp",
                        "--target", str(tmp_path / "t"), "--report", str(report), req],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    names = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
             for i in json.loads(report.read_text())["install"]}
    assert names["tensorflow"] == "2.21.0"
    assert "nvidia-cudnn-cu12" in names and "nvidia-cublas-cu12" in names
    assert not any(n.startswith(("apache-beam", "tensorflow-transform")) for n in names)


# ------------------------------------------------------------------------------ docs/CLOUD.md
CLOUD_MD = REPO / "docs" / "CLOUD.md"

CLOUDBUILD_LOADER = r"""
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["GCLOUD_SDK_ROOT"], "lib"))
import gcloud
gcloud._fix_google_module()
from apitools.base.py import encoding
from googlecloudsdk.api_lib.cloudbuild import cloudbuild_util, config
build = config.LoadCloudbuildConfigFromPath(sys.argv[1], cloudbuild_util.GetMessagesModule(),
                                            params=json.loads(sys.argv[2]))
print(json.dumps(encoding.MessageToDict(build)))
"""


def test_docs_trainer_build_config_loads_in_gcloud(tmp_path):
    """The Cloud Build config docs/CLOUD.md tells you to write, read by gcloud's own loader
    (which rejects unknown fields), with the substitution the documented command passes."""
    root, python = _require_sdk()
    text = CLOUD_MD.read_text()
    (config_text,) = re.findall(r"cat > /tmp/cloudbuild\.trainer\.yaml <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    (submit,) = re.findall(r"(gcloud builds submit [^\n]*--config /tmp/cloudbuild\.trainer\.yaml[^\n]*\\\n[^\n]*)", text)
    argv = shlex.split(submit.replace("\\\n", " "))
    assert argv[-1] == "."  # the repository root is the build context
    key, _, value = argv[argv.index("--substitutions") + 1].partition("=")
    path = tmp_path / "cloudbuild.trainer.yaml"
    path.write_text(config_text + "\n")
    p = subprocess.run([python, "-c", CLOUDBUILD_LOADER, str(path), json.dumps({key: value})], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "GCLOUD_SDK_ROOT": str(root),
                                                    "CLOUDSDK_CONFIG": str(tmp_path / "cfg")})
    assert p.returncode == 0, p.stderr
    build = json.loads(p.stdout)
    (step,) = build["steps"]
    assert step["name"] == "gcr.io/cloud-builders/docker"
    args = step["args"]
    assert args[:3] == ["build", "-f", DOCKERFILE.name] and args[-1] == "."
    assert args[args.index("-t") + 1] == "${" + key + "}" and build["images"] == ["${" + key + "}"]
    assert build["substitutions"] == {key: value}


def test_docs_dry_run_example_is_what_the_script_prints(cloud):
    text = CLOUD_MD.read_text()
    (example,) = re.findall(r"does 1 and 2 and prints:\n\n```\n(.*?)```", text, re.S)
    (cmd,) = commands(example)
    f = flags(cmd)
    spec = yaml.safe_load(printed_spec(example))
    c = job_pool(spec)["containerSpec"]
    args = task.parse_args(c["args"])
    trainer_flags = c["args"][3:]
    p = cloud.run(["--project", f["--project"], "--region", f["--region"], "--job_name", f["--display-name"],
                   "--input_path", args.input_path, "--output_dir", args.output_dir, "--image", c["imageUri"],
                   "--dry_run", "--", *trainer_flags])
    assert p.returncode == 0, p.stderr
    normalise = lambda s: re.sub(r"/tmp(/[^/\s]+)*/tmp\.[A-Za-z0-9]+/", "/tmp/tmp.XXXXXXXXXX/", s)  # noqa: E731
    assert normalise(p.stdout) == normalise(example)


# ------------------------------------------------------------------------------ hyperparameter tuning
from trainer import hypertune  # noqa: E402 - the trial's parser

HP = ["--hptune", "12", "--parallel_trials", "3"]


def _hp_spec(stdout: str) -> dict:
    """The printed HyperparameterTuningJob spec, its top-level keys checked."""
    spec = yaml.safe_load(printed_spec(stdout))
    assert list(spec) == ["maxTrialCount", "parallelTrialCount", "studySpec", "trialJobSpec"]
    return spec


def _trial_argv(args: list[str], params: dict[str, str]) -> list[str]:
    """A trial's argv as Vertex AI builds it: the container args, then --NAME=VALUE per
    parameter."""
    return [*args, *(f"--{name}={value}" for name, value in params.items())]


def test_hptune_dry_run_prints_the_tuning_job(cloud):
    from trainer import tune

    p = cloud.run([*BASE, "--image", IMAGE, "--job_name", "hp1", *HP, "--dry_run", "--", "--eval_k", "5"])
    assert p.returncode == 0, p.stderr
    assert cloud.cloud_calls() == [], "a dry run must not run gcloud"
    (cmd,) = commands(p.stdout)
    assert cmd[:4] == ["gcloud", "ai", "hp-tuning-jobs", "create"]
    f = flags(cmd)
    assert set(f) == {"--project", "--region", "--display-name", "--max-trial-count",
                      "--parallel-trial-count", "--config"}
    assert (f["--project"], f["--region"], f["--display-name"]) == ("proj-1", "us-central1", "hp1")
    assert (f["--max-trial-count"], f["--parallel-trial-count"]) == ("12", "3")
    spec = _hp_spec(p.stdout)
    assert (spec["maxTrialCount"], spec["parallelTrialCount"]) == (12, 3)
    study = spec["studySpec"]
    assert set(study) == {"metrics", "parameters"}  # algorithm unset: Vertex AI's default (Bayesian)
    assert study["metrics"] == [{"metricId": "ndcg", "goal": "MAXIMIZE"}]
    params = {x["parameterId"]: x for x in study["parameters"]}
    assert list(params) == ["n_embeds", "regularization", "alpha", "num_epochs"]
    space = tune.SearchSpace()  # the local tuner's ranges
    assert params["n_embeds"] == {"parameterId": "n_embeds", "scaleType": "UNIT_LOG_SCALE",
                                  "integerValueSpec": {"minValue": space.factors[0], "maxValue": space.factors[1]}}
    assert params["regularization"]["doubleValueSpec"] == dict(zip(("minValue", "maxValue"), space.regularization_implicit))
    assert params["alpha"]["doubleValueSpec"] == dict(zip(("minValue", "maxValue"), space.alpha))
    assert params["num_epochs"]["integerValueSpec"] == {"minValue": 2, "maxValue": space.max_sweeps}
    assert params["regularization"]["scaleType"] == params["alpha"]["scaleType"] == "UNIT_LOG_SCALE"
    trial = spec["trialJobSpec"]
    assert set(trial) == {"workerPoolSpecs", "baseOutputDirectory"}
    assert trial["baseOutputDirectory"] == {"outputUriPrefix": "gs://bkt/model"}  # AIP_MODEL_DIR=.../TRIAL/model/
    # the same worker pool as the custom job, plus --hypertune_metric
    plain = cloud.run([*BASE, "--image", IMAGE, "--dry_run", "--", "--eval_k", "5"])
    custom_pool = job_pool(yaml.safe_load(printed_spec(plain.stdout)))
    (pool,) = trial["workerPoolSpecs"]
    args = pool["containerSpec"]["args"]
    # the image's ENTRYPOINT is trainer.task: a trial runs trainer.hypertune instead
    assert pool["containerSpec"]["command"] == ["python", "-m", "trainer.hypertune"]
    assert args == [*custom_pool["containerSpec"]["args"][:3], "--hypertune_metric=ndcg", "--eval_k", "5"]
    assert {k: v for k, v in pool.items() if k != "containerSpec"} == {k: v for k, v in custom_pool.items() if k != "containerSpec"}
    # every parameter is a trainer flag, in the --NAME=VALUE form Vertex AI appends, at both ends
    for end in ("minValue", "maxValue"):
        values = {n: str(x.get("integerValueSpec", x.get("doubleValueSpec"))[end]) for n, x in params.items()}
        ns = hypertune.parse_args(_trial_argv(args, values))
        assert (ns.hypertune_metric, ns.eval_k) == ("ndcg", 5)
        assert ns.n_embeds == int(values["n_embeds"]) and ns.num_epochs == int(values["num_epochs"])
        assert ns.regularization == float(values["regularization"]) and ns.alpha == float(values["alpha"])
    assert hypertune.parse_args(_trial_argv(args, {"regularization": "1e-01", "alpha": "2.5E+02"})).alpha == 250.0


def test_hptune_with_objective_wals_searches_the_unobserved_weight(cloud):
    from trainer import tune

    p = cloud.run([*BASE, "--image", IMAGE, "--hptune", "4", "--hptune_metric", "map", "--dry_run",
                   "--", "--objective", "wals"])
    assert p.returncode == 0, p.stderr
    spec = _hp_spec(p.stdout)
    assert spec["studySpec"]["metrics"] == [{"metricId": "map", "goal": "MAXIMIZE"}]
    assert spec["parallelTrialCount"] == 1  # the default
    params = {x["parameterId"]: x for x in spec["studySpec"]["parameters"]}
    assert list(params) == ["n_embeds", "regularization", "unobserved_weight", "num_epochs"]
    space = tune.SearchSpace()
    assert params["regularization"]["doubleValueSpec"] == dict(zip(("minValue", "maxValue"), space.regularization_wals))
    assert params["unobserved_weight"]["doubleValueSpec"] == dict(zip(("minValue", "maxValue"), space.unobserved_weight))
    (pool,) = spec["trialJobSpec"]["workerPoolSpecs"]
    assert "--hypertune_metric=map" in pool["containerSpec"]["args"]


def test_hptune_dry_run_output_is_accepted_by_gcloud(cloud):
    """The printed command and spec, given to gcloud's own `ai hp-tuning-jobs create` (its
    parser, its --config import into the HyperparameterTuningJob message, which rejects
    unknown fields, and its merge of the command-line counts)."""
    p = cloud.run([*BASE, "--image", IMAGE, "--job_name", "hp1", *HP, "--dry_run"])
    assert p.returncode == 0, p.stderr
    (cmd,) = commands(p.stdout)
    g, sent = cloud.gcloud_create(cmd[1:], printed_spec(p.stdout))
    assert g.returncode == 0, g.stderr
    assert sent["parent"] == "projects/proj-1/locations/us-central1" and sent["displayName"] == "hp1"
    assert sent["unrecognized"] == []
    job = sent["job"]
    assert (int(job["maxTrialCount"]), int(job["parallelTrialCount"])) == (12, 3)
    assert job["studySpec"]["metrics"] == [{"metricId": "ndcg", "goal": "MAXIMIZE"}]
    assert "algorithm" not in job["studySpec"]
    assert [x["parameterId"] for x in job["studySpec"]["parameters"]] == ["n_embeds", "regularization", "alpha", "num_epochs"]
    n_embeds = job["studySpec"]["parameters"][0]
    assert (int(n_embeds["integerValueSpec"]["minValue"]), int(n_embeds["integerValueSpec"]["maxValue"])) == (8, 96)
    assert job["trialJobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": "gs://bkt/model"}
    (pool,) = job["trialJobSpec"]["workerPoolSpecs"]
    assert pool["containerSpec"] == {"imageUri": IMAGE, "command": ["python", "-m", "trainer.hypertune"], "args": [
        "--input_path=gs://bkt/prep", "--output_dir=gs://bkt/model", "--no_progress", "--hypertune_metric=ndcg"]}
    # the oracle can fail: a misspelt field is refused or reported
    bad = printed_spec(p.stdout).replace("metricId", "metricID")
    g, sent = cloud.gcloud_create(cmd[1:], bad)
    assert g.returncode != 0 or sent["unrecognized"], "gcloud took a misspelt studySpec field"


def test_hptune_submission_goes_through_gclouds_parser(tmp_path):
    cloud = Cloud(tmp_path, with_gcloud_code=True)
    p = cloud.run([*BASE, "--image", IMAGE, "--job_name", "hp9", "--region", "europe-west4",
                   "--hptune", "6", "--parallel_trials", "2", "--", "--seed", "4"])
    assert p.returncode == 0, p.stderr
    assert "submitted successfully" in p.stdout + p.stderr
    (call,) = cloud.cloud_calls()
    assert call["argv"][:3] == ["ai", "hp-tuning-jobs", "create"]
    assert call["config"] == printed_spec(p.stdout)
    sent = json.loads(cloud.capture.read_text())
    assert sent["parent"] == "projects/proj-1/locations/europe-west4" and sent["unrecognized"] == []
    assert (int(sent["job"]["maxTrialCount"]), int(sent["job"]["parallelTrialCount"])) == (6, 2)
    (pool,) = sent["job"]["trialJobSpec"]["workerPoolSpecs"]
    assert pool["containerSpec"]["command"] == ["python", "-m", "trainer.hypertune"]
    ns = hypertune.parse_args(_trial_argv(pool["containerSpec"]["args"], {"n_embeds": "17", "num_epochs": "3"}))
    assert (ns.seed, ns.n_embeds, ns.num_epochs, ns.hypertune_metric) == (4, 17, 3, "ndcg")


@pytest.mark.parametrize("args,msg", [
    (["--hptune", "0"], "--hptune must be a number of trials"),
    (["--hptune", "x"], "--hptune must be a number of trials"),
    (["--hptune", "3", "--parallel_trials", "4"], "--parallel_trials 4 is more than the --hptune 3 trials"),
    (["--hptune", "3", "--parallel_trials", "0"], "--parallel_trials must be a positive integer"),
    (["--parallel_trials", "2"], "--parallel_trials is only used with --hptune"),
    (["--hptune_metric", "ndcg"], "--hptune_metric is only used with --hptune"),
    (["--hptune", "3", "--hptune_metric", "auc"], "--hptune_metric must be ndcg, map, recall or precision"),
    (["--hptune", "3", "--", "--n_embeds", "8"], "--n_embeds is searched by --hptune"),
    (["--hptune", "3", "--", "--alpha=2"], "--alpha is searched by --hptune"),
    (["--hptune", "3", "--", "--hypertune_metric", "ndcg"], "do not give it after --"),
    (["--hptune", "3", "--", "--resume"], "--resume is not available in a tuning trial"),
    (["--hptune", "3", "--", "--early_stopping_metric", "ndcg"], "--early_stopping_metric is not available"),
])
def test_hptune_bad_arguments(cloud, args, msg):
    p = cloud.run([*BASE, "--image", IMAGE, *args])  # not a dry run
    assert p.returncode == 2
    line = one_line(p.stderr)
    assert line.startswith("run_training.sh:") and msg in line, line
    assert cloud.cloud_calls() == [] and commands(p.stdout) == []


def test_hptune_prebuilt_image_runs_the_trial_module(cloud):
    p = cloud.run([*BASE, "--prebuilt_image", PREBUILT, "--package_uri", "gs://bkt/pkg/t.tar.gz", "--hptune", "2",
                   "--dry_run"])
    assert p.returncode == 0, p.stderr
    (pool,) = _hp_spec(p.stdout)["trialJobSpec"]["workerPoolSpecs"]
    spec = pool["pythonPackageSpec"]
    assert spec["pythonModule"] == "trainer.hypertune" and spec["packageUris"] == ["gs://bkt/pkg/t.tar.gz"]
    assert hypertune.parse_args(spec["args"]).hypertune_metric == "ndcg"
