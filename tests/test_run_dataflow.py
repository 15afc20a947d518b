"""run_dataflow.sh: relative paths are the caller's, and a dry run installs and runs nothing.

Oracles: the printed command parsed with ``shlex`` and with the job's own option parser
(``PreprocessOptions``), paths computed here with ``os.path`` from the caller's directory; a
real run from another directory, whose output must land there; stand-ins for ``install.sh``
and ``.venv/bin/python`` that record whether the script ran them.
"""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions

from preprocess import sample_data
from preprocess.options import PreprocessOptions, validate
from tests.pipelines import REPO
from tests.processes import run_in_group

SCRIPT = REPO / "run_dataflow.sh"
GCP = ["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1",
       "--temp_location", "gs://b/tmp", "--output_dir", "gs://b/out"]


def run(args, cwd, script=SCRIPT, timeout=120, **env) -> subprocess.CompletedProcess:
    """Runs the script the way a user in `cwd` would: by a path relative to cwd."""
    rel = os.path.relpath(script, cwd)
    if "/" not in rel:
        rel = "./" + rel
    return run_in_group([rel, *args], timeout, cwd=cwd, env={**os.environ, **env})


def printed(p: subprocess.CompletedProcess) -> list[list[str]]:
    assert p.returncode == 0, p.stderr
    return [shlex.split(line) for line in p.stdout.strip().splitlines()]


def preprocess_argv(cmd: list[str]) -> list[str]:
    assert cmd[1:3] == ["-m", "preprocess"], cmd
    return cmd[3:]


def mine(cwd: pathlib.Path, rel: str) -> str:
    return os.path.normpath(os.path.join(cwd, rel))


@pytest.fixture
def caller(tmp_path) -> pathlib.Path:
    d = tmp_path / "my work" / "sub"  # a space in the caller's path, too
    d.mkdir(parents=True)
    return d


def test_relative_local_paths_are_the_callers(caller):
    p = run(["--dry_run", "--input", "data/in*.json", "--input_format", "ga_json",
             "--output_dir=./out/prep", "--temp_location", "../tmp", "--staging_location=stage",
             "--requirements_file", "reqs.txt", "--extra_package=pkgs/a.tar.gz", "--skip_training"], caller)
    (cmd,) = printed(p)
    argv = preprocess_argv(cmd)
    options = PreprocessOptions(argv)  # the job's own parser reads the printed flags
    validate(options)
    gcp, setup = options.view_as(GoogleCloudOptions), options.view_as(SetupOptions)
    assert os.path.normpath(options.input) == mine(caller, "data/in*.json")
    assert os.path.normpath(options.output_dir) == mine(caller, "out/prep")
    assert os.path.normpath(gcp.temp_location) == mine(caller, "../tmp")
    assert os.path.normpath(gcp.staging_location) == mine(caller, "stage")
    assert os.path.normpath(setup.requirements_file) == mine(caller, "reqs.txt")
    assert [os.path.normpath(x) for x in setup.extra_packages] == [mine(caller, "pkgs/a.tar.gz")]
    assert "--output_dir=" + options.output_dir in argv  # the --flag=value form stays one word
    assert str(REPO) not in options.input


@pytest.mark.parametrize("value", ["gs://bkt/in/*.json", "/abs/in.json", "s3://b/x", "https://h/x.json"])
def test_urls_and_absolute_paths_pass_unchanged(caller, value):
    for form in ([f"--input={value}"], ["--input", value]):
        (cmd,) = printed(run(["--dry_run", *form, "--output_dir", "/abs/out"], caller))
        options = PreprocessOptions(preprocess_argv(cmd))
        assert options.input == value and options.output_dir == "/abs/out"


def test_dataflow_setup_file(caller):
    (cmd,) = printed(run(["--dry_run", *GCP, "--input", "gs://b/in.json", "--setup_file", "../my/setup.py",
                          "--sdk_location", "container"], caller))
    setup = PreprocessOptions(preprocess_argv(cmd)).view_as(SetupOptions)
    assert os.path.normpath(setup.setup_file) == mine(caller, "../my/setup.py")
    assert setup.sdk_location == "container"  # Beam's keyword, not a path
    # The default one is the project's (the commands run in the repository, as stderr says).
    (cmd,) = printed(run(["--dry_run", *GCP, "--bq_table", "p.d.ga_sessions_*"], caller))
    setup = PreprocessOptions(preprocess_argv(cmd)).view_as(SetupOptions)
    assert os.path.samefile(REPO / setup.setup_file, REPO / "setup.py")
    p = run(["--dry_run", *GCP, "--bq_table", "p.d.ga_sessions_*"], caller)
    assert f"the commands run in {REPO}" in p.stderr


@pytest.mark.parametrize("args", [["--input"], ["--input", "--skip_training"], ["--output_dir="],
                                  ["--setup_file", "--runner", "DataflowRunner"], ["--runner"]])
def test_path_flag_without_value(caller, args):
    p = run(["--dry_run", *args], caller)
    assert p.returncode == 2
    (line,) = [x for x in p.stderr.splitlines() if x.strip()]
    assert "needs a value" in line


# ------------------------------------------------------------------------------ the bundled sample's two forms
def sample_commands(args, cwd) -> tuple[list, list]:
    """(generator command or [], preprocess argv) of a dry run on the bundled sample."""
    cmds = printed(run(["--dry_run", "--skip_training", *args], cwd))
    generate = [c for c in cmds if c[1:3] == ["-m", "preprocess.sample_data"]]
    (job,) = [c for c in cmds if c[1:3] == ["-m", "preprocess"]]
    assert len(generate) <= 1 and len(cmds) == len(generate) + 1
    return (generate[0] if generate else []), preprocess_argv(job)


@pytest.mark.parametrize("args", [["--sample_schema", "ga4"], ["--sample_schema=ga4"]])
def test_sample_schema_ga4_reads_the_ga4_form_with_the_matching_flags(caller, args):
    generate, argv = sample_commands(args, caller)
    options = PreprocessOptions(argv)
    validate(options)
    assert options.input == sample_data.DEFAULT_OUTPUT["ga4"]  # relative to the repository
    assert (options.input_format, options.item_source, options.duration) == (
        "ga4_json", "event_param:article_id", "engagement_time")
    # The flags the generator's docstring promises give the GA360 form's interactions.
    flags = sample_data.GA4_READER_FLAGS
    assert [argv[argv.index(f) + 1] for f in flags[::2]] == list(flags[1::2])
    assert options.test_fraction == 0.2 and options.bq_table is None and options.ga4_table is None
    if generate:  # printed when the file is missing or older than its generator
        assert generate[3:] == ["--schema", "ga4", "--output", sample_data.DEFAULT_OUTPUT["ga4"]]


@pytest.mark.parametrize("args", [[], ["--sample_schema", "ga360"]])
def test_sample_schema_defaults_to_ga360(caller, args):
    generate, argv = sample_commands(args, caller)
    options = PreprocessOptions(argv)
    assert (options.input, options.input_format, options.item_source) == (
        sample_data.DEFAULT_OUTPUT["ga360"], "ga_json", None)
    assert "--duration" not in argv
    if generate:
        assert generate[3:] == ["--schema", "ga360", "--output", sample_data.DEFAULT_OUTPUT["ga360"]]


@pytest.mark.parametrize("args, message", [
    (["--sample_schema", "ga5"], "must be ga360 or ga4"),
    (["--sample_schema"], "needs a value"),
    (["--sample_schema", "ga4", "--input", "x.json"], "only applies to the local run"),
    (["--sample_schema", "ga360", *GCP, "--bq_table", "p.d.t"], "only applies to the local run"),
])
def test_sample_schema_refused(caller, args, message):
    p = run(["--dry_run", *args], caller)
    assert p.returncode == 2 and message in p.stderr and not p.stdout


def test_sample_made_again_when_older_than_its_generator(stand_in, tmp_path):
    """A sample left by an older generator is regenerated (the two forms must come from one)."""
    (stand_in / "preprocess").mkdir()
    generator = stand_in / "preprocess" / "sample_data.py"
    sample = stand_in / sample_data.DEFAULT_OUTPUT["ga360"]
    sample.parent.mkdir(parents=True)
    generator.write_text("")
    sample.write_text("")
    script = stand_in / "run_dataflow.sh"
    for sample_time, regenerated in ((1_000, True), (3_000, False)):
        os.utime(generator, (2_000, 2_000))
        os.utime(sample, (sample_time, sample_time))
        cmds = printed(run(["--dry_run", "--skip_training"], tmp_path, script=script))
        assert any(c[1:3] == ["-m", "preprocess.sample_data"] for c in cmds) == regenerated


def test_dataflow_input_may_be_a_ga4_table(caller):
    (cmd,) = printed(run(["--dry_run", *GCP, "--ga4_table", "p.d.events_*"], caller))
    options = PreprocessOptions(preprocess_argv(cmd))
    validate(options)
    assert options.ga4_table == "p.d.events_*" and options.input is None
    p = run(["--dry_run", *GCP], caller)  # the control: no input at all is refused
    assert p.returncode == 2 and "--ga4_table" in p.stderr and not p.stdout


# ------------------------------------------------------------------------------ dry run runs nothing
RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$(basename "$0") $*" >> "$RECORD"
"""
INSTALL = """#!/usr/bin/env bash
printf '%s\\n' "install.sh" >> "$RECORD"
mkdir -p .venv/bin && cp "$RECORDER_SRC" .venv/bin/python && chmod +x .venv/bin/python
"""


@pytest.fixture
def stand_in(tmp_path) -> pathlib.Path:
    """A copy of the script beside an install.sh that records and creates a recording
    .venv/bin/python (no .venv yet: the first run would install)."""
    d = tmp_path / "repo"
    d.mkdir()
    shutil.copy(SCRIPT, d / "run_dataflow.sh")
    (d / "recorder").write_text(RECORDER)
    (d / "install.sh").write_text(INSTALL)
    (d / "install.sh").chmod(0o755)
    return d


@pytest.mark.parametrize("argv", [
    ["--dry_run"],
    ["--skip_training", "--dry_run"],
    ["--sample_schema", "ga4", "--dry_run"],
    [*GCP, "--bq_table", "p.d.t", "--dry_run"],
    [*GCP, "--ga4_table", "p.d.events_*", "--dry_run"],
    ["--dry_run", *GCP, "--input", "gs://b/x.json"],
    ["--help", "--dry_run"],
])
def test_dry_run_installs_and_runs_nothing(stand_in, tmp_path, argv):
    record = tmp_path / "record.txt"
    env = {"RECORD": str(record), "RECORDER_SRC": str(stand_in / "recorder")}
    p = run(argv, tmp_path, script=stand_in / "run_dataflow.sh", **env)
    assert p.returncode == 0, p.stderr
    assert not record.exists(), record.read_text()
    assert not (stand_in / ".venv").exists() and not (stand_in / "output").exists()
    if "--help" not in argv:
        cmds = printed(p)
        assert cmds and all(c[0] == ".venv/bin/python" for c in cmds)
    # With a .venv in place (a second run), still nothing runs.
    (stand_in / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(stand_in / "recorder", stand_in / ".venv" / "bin" / "python")
    (stand_in / ".venv" / "bin" / "python").chmod(0o755)
    p = run(argv, tmp_path, script=stand_in / "run_dataflow.sh", **env)
    if "--help" in argv:  # --help runs `python -m preprocess --help`: the flag list, not the job
        assert record.read_text().splitlines() == ["python -m preprocess --help"]
    else:
        assert p.returncode == 0 and not record.exists()


def test_the_stand_ins_do_record_a_real_run(stand_in, tmp_path):
    """The control for the test above: without --dry_run, install and the job do run."""
    record = tmp_path / "record.txt"
    p = run(["--input", "in.csv", "--input_format", "interactions_csv", "--output_dir", "out"], tmp_path,
            script=stand_in / "run_dataflow.sh", RECORD=str(record), RECORDER_SRC=str(stand_in / "recorder"))
    assert p.returncode == 0, p.stderr
    install, job = record.read_text().splitlines()
    assert install == "install.sh"
    assert job.startswith("python -m preprocess ") and f"--input {tmp_path}/in.csv" in job


# ------------------------------------------------------------------------------ a real run
@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").exists(), reason="needs ./install.sh")
def test_a_real_run_from_another_directory_writes_there(caller):
    """Preprocessing (FnApiRunner) with relative --input/--output_dir, from another directory:
    it reads the caller's file and writes into the caller's directory, not the repository's."""
    (caller / "in").mkdir()
    (caller / "in" / "interactions.csv").write_text(
        "visitorId,contentId,session_duration\nv1,c1,1000\nv1,c2,3000\nv2,c1,2000\nv3,c2,500\n")
    p = run(["--input", "in/interactions.csv", "--input_format", "interactions_csv", "--output_dir=prep"],
            caller, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    meta = json.loads((caller / "prep" / "metadata.json").read_text())
    assert (meta["nusers"], meta["nitems"], meta["ninteractions"]) == (3, 2, 4)
    assert not (REPO / "prep").exists() and not (REPO / "in").exists()
