#!/usr/bin/env bash
# Submit the WALS trainer (python -m trainer.task) as a Vertex AI custom job.
#
#   ./run_training.sh --input_path gs://BUCKET/prep --output_dir gs://BUCKET/model \
#       --image REGION-docker.pkg.dev/PROJECT/REPO/wals-trainer:TAG \
#       [--project P] [--region us-central1] [--machine_type n1-standard-8] \
#       [--accelerator_type NVIDIA_TESLA_T4] [--accelerator_count 1] [--job_name NAME] \
#       [--hptune N [--parallel_trials P] [--hptune_metric ndcg|map|recall|precision]] \
#       [--dry_run] [-- TRAINER FLAGS, e.g. --num_epochs 20 --n_embeds 64]
#
# --image URI: our trainer container (built from Dockerfile.trainer: TensorFlow 2.21 with GPU
#     support, ENTRYPOINT python -m trainer.task), the default path. Or, instead:
# --prebuilt_image URI [--staging gs://B/staging] [--package_uri gs://B/pkg.tar.gz]: build the
#     trainer-only sdist, copy it to --staging (default OUTPUT_DIR/staging) and run it on a
#     Vertex AI prebuilt TensorFlow training image (the URI is required: see docs/CLOUD.md).
# The trainer flags are checked locally with the trainer's own parser before anything is
# uploaded or submitted. The job is submitted with a job spec file (gcloud ai custom-jobs
# create --config FILE), so paths and flags may contain any character, commas included.
# --dry_run (anywhere on the line, also after --) builds and checks everything locally, prints
# the commands (prefixed "+ ") and the job spec, and uploads and submits nothing.
# --hptune N: a Vertex AI hyperparameter tuning job instead (gcloud ai hp-tuning-jobs create,
#     N trials, P at a time, default 1; Vertex AI's default Bayesian search) over --n_embeds,
#     --regularization, --alpha (--unobserved_weight with --objective wals) and --num_epochs.
#     Each trial runs python -m trainer.hypertune --hypertune_metric METRIC (default ndcg) with
#     the trainer flags: it trains on the training records minus trainer.tune's validation
#     carve-out and reports METRIC@eval_k on it; trial outputs go to OUTPUT_DIR/TRIAL_ID/model/.
#     See docs/CLOUD.md.
# --accelerator_count 0 runs on CPU only; N > 1: the trainer uses all N GPUs (docs/TRAINER.md,
# "Devices"). Bad input: one line on stderr, exit status 2.
set -euo pipefail

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { echo "run_training.sh: $*" >&2; exit 2; }

INPUT_PATH=""
OUTPUT_DIR=""
PROJECT="${PROJECT:-${GOOGLE_CLOUD_PROJECT:-}}"
REGION="${REGION:-us-central1}"
STAGING=""
MACHINE_TYPE="n1-standard-8"
ACCELERATOR_TYPE="NVIDIA_TESLA_T4"
ACCELERATOR_COUNT="1"
IMAGE=""
PREBUILT_IMAGE=""
JOB_NAME="wals-trainer-$(date -u +%Y%m%d-%H%M%S)"
PACKAGE_URI=""
DRY_RUN=0
HPTUNE=""
PARALLEL_TRIALS=""
HPTUNE_METRIC=""
TRAINER_ARGS=()

# --dry_run anywhere (before or after --) means nothing is uploaded or submitted; it is never
# passed to the trainer.
for a in "$@"; do [[ "$a" == --dry_run ]] && DRY_RUN=1; done

# Options take their value as the next word or after "=" (--region=europe-west4).
while [[ $# -gt 0 ]]; do
  opt="$1"
  case "$opt" in
    --) shift; break ;;
    --dry_run) shift; continue ;;
    -h|--help) usage; exit 0 ;;
    --*=*) name="${opt%%=*}"; value="${opt#*=}"; shift ;;
    --input_path|--output_dir|--project|--region|--staging|--machine_type|--accelerator_type|\
    --accelerator_count|--image|--prebuilt_image|--job_name|--package_uri|--hptune|\
    --parallel_trials|--hptune_metric)
      name="$opt"
      [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$opt needs a value"
      value="$2"; shift 2 ;;
    *) die "unknown option $opt (trainer flags go after --; --help lists the options)" ;;
  esac
  [[ -n "$value" ]] || die "$name needs a value"
  case "$name" in
    --input_path) INPUT_PATH="$value" ;;
    --output_dir) OUTPUT_DIR="$value" ;;
    --project) PROJECT="$value" ;;
    --region) REGION="$value" ;;
    --staging) STAGING="$value" ;;
    --machine_type) MACHINE_TYPE="$value" ;;
    --accelerator_type) ACCELERATOR_TYPE="$value" ;;
    --accelerator_count) ACCELERATOR_COUNT="$value" ;;
    --image) IMAGE="$value" ;;
    --prebuilt_image) PREBUILT_IMAGE="$value" ;;
    --job_name) JOB_NAME="$value" ;;
    --package_uri) PACKAGE_URI="$value" ;;
    --hptune) HPTUNE="$value" ;;
    --parallel_trials) PARALLEL_TRIALS="$value" ;;
    --hptune_metric) HPTUNE_METRIC="$value" ;;
    *) die "unknown option $name (trainer flags go after --; --help lists the options)" ;;
  esac
done
for a in "$@"; do [[ "$a" == --dry_run ]] || TRAINER_ARGS+=("$a"); done

# ------------------------------------------------------------------------------- validation
[[ -n "$INPUT_PATH" ]] || die "--input_path is required (the preprocessing output, gs://...)"
[[ -n "$OUTPUT_DIR" ]] || die "--output_dir is required (gs://...)"
# A gs:// URL with a valid bucket name (3-222 characters: lowercase letters, digits, - _ .).
GS_RE='^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$'
[[ "$INPUT_PATH" =~ $GS_RE ]] || die "--input_path must be a gs://BUCKET/... path (the job cannot read local files), got '$INPUT_PATH'"
[[ "$OUTPUT_DIR" =~ $GS_RE ]] || die "--output_dir must be a gs://BUCKET/... path, got '$OUTPUT_DIR'"
if [[ -n "$IMAGE" && -n "$PREBUILT_IMAGE" ]]; then
  die "give --image (our trainer container) or --prebuilt_image (a Vertex AI prebuilt image), not both"
fi
if [[ -z "$IMAGE" && -z "$PREBUILT_IMAGE" ]]; then
  die "no trainer image: pass --image URI of the container built from Dockerfile.trainer, or --prebuilt_image URI (see docs/CLOUD.md)"
fi
if [[ -n "$IMAGE" ]]; then
  [[ -z "$STAGING" ]] || die "--staging is only used with --prebuilt_image (the --image container holds the trainer)"
  [[ -z "$PACKAGE_URI" ]] || die "--package_uri is only used with --prebuilt_image (the --image container holds the trainer)"
fi
# A container image reference: [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST].
IMAGE_RE='^([a-z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$'
for pair in "--image:$IMAGE" "--prebuilt_image:$PREBUILT_IMAGE"; do
  flag="${pair%%:*}"; uri="${pair#*:}"
  [[ -z "$uri" || "$uri" =~ $IMAGE_RE ]] || die "$flag: '$uri' is not a container image URI (HOST/PATH:TAG)"
done
if [[ -z "$PROJECT" ]] && command -v gcloud >/dev/null 2>&1; then
  PROJECT="$(gcloud config get-value project 2>/dev/null || true)"
fi
[[ -n "$PROJECT" ]] || die "no project: pass --project or set GOOGLE_CLOUD_PROJECT"
[[ "$PROJECT" =~ ^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "--project '$PROJECT' is not a Google Cloud project ID"
[[ "$REGION" =~ ^[a-z]+(-[a-z]+)+[0-9]+$ ]] || die "--region '$REGION' is not a region (e.g. us-central1)"
[[ "$MACHINE_TYPE" =~ ^[a-z][a-z0-9-]*$ ]] || die "--machine_type '$MACHINE_TYPE' is not a machine type (e.g. n1-standard-8)"
[[ "$ACCELERATOR_COUNT" =~ ^(0|[1-9][0-9]{0,2})$ ]] || die "--accelerator_count must be a non-negative integer (0 = CPU only), got '$ACCELERATOR_COUNT'"
[[ "$ACCELERATOR_TYPE" =~ ^[A-Z][A-Z0-9_]*$ ]] || die "--accelerator_type '$ACCELERATOR_TYPE' is not an accelerator type (e.g. NVIDIA_TESLA_T4, NVIDIA_L4)"
[[ "$JOB_NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$ ]] || die "--job_name '$JOB_NAME': use 1-128 letters, digits, '-', '_' or '.' (it is also a folder name under --staging)"
if [[ -n "$PREBUILT_IMAGE" ]]; then
  STAGING="${STAGING:-${OUTPUT_DIR%/}/staging}"
  [[ "$STAGING" =~ $GS_RE ]] || die "--staging must be a gs://BUCKET/... path, got '$STAGING'"
  [[ -z "$PACKAGE_URI" || ( "$PACKAGE_URI" =~ $GS_RE && "$PACKAGE_URI" =~ \.(tar\.gz|whl)$ ) ]] \
    || die "--package_uri must be a gs://BUCKET/... .tar.gz sdist or .whl, got '$PACKAGE_URI'"
fi
for v in "$PROJECT" "$STAGING" "$PACKAGE_URI" "$INPUT_PATH" "$OUTPUT_DIR"; do
  [[ "$v" != *[[:cntrl:]]* ]] || die "control characters (line breaks, tabs) are not allowed in paths or names"
done
for a in "${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}"; do
  case "$a" in --input_path|--input_path=*|--output_dir|--output_dir=*)
    die "give --input_path/--output_dir before --, not as trainer flags" ;;
  esac
done
if [[ -n "$HPTUNE" ]]; then
  [[ "$HPTUNE" =~ ^[1-9][0-9]{0,3}$ ]] || die "--hptune must be a number of trials (1-9999), got '$HPTUNE'"
  PARALLEL_TRIALS="${PARALLEL_TRIALS:-1}"
  [[ "$PARALLEL_TRIALS" =~ ^[1-9][0-9]{0,3}$ ]] || die "--parallel_trials must be a positive integer, got '$PARALLEL_TRIALS'"
  (( PARALLEL_TRIALS <= HPTUNE )) || die "--parallel_trials $PARALLEL_TRIALS is more than the --hptune $HPTUNE trials"
  HPTUNE_METRIC="${HPTUNE_METRIC:-ndcg}"
  [[ "$HPTUNE_METRIC" =~ ^(ndcg|map|recall|precision)$ ]] || die "--hptune_metric must be ndcg, map, recall or precision, got '$HPTUNE_METRIC'"
  for a in "${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}"; do
    case "$a" in --hypertune_metric|--hypertune_metric=*)
      die "with --hptune the trials' --hypertune_metric is --hptune_metric; do not give it after --" ;;
    esac
  done
else
  [[ -z "$PARALLEL_TRIALS" ]] || die "--parallel_trials is only used with --hptune N"
  [[ -z "$HPTUNE_METRIC" ]] || die "--hptune_metric is only used with --hptune N"
fi

# Prints a command as one shell-quoted line: safe words as they are, others in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() { printf '+'; for a in "$@"; do printf ' '; quote "$a"; done; printf '\n'; }
run() { show "$@"; [[ "$DRY_RUN" == 1 ]] || "$@"; }

cd "$(dirname "$0")"
REPO="$PWD"
PYTHON="${PYTHON:-python3}"
[[ -x .venv/bin/python && "${PYTHON}" == python3 ]] && PYTHON=.venv/bin/python
command -v "$PYTHON" >/dev/null 2>&1 || die "no Python: '$PYTHON' not found (set PYTHON, or run ./install.sh)"
[[ -f trainer/flags.py ]] || die "trainer/flags.py not found beside run_training.sh: cannot check the trainer flags"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [[ -n "$HPTUNE" ]]; then SPEC="$WORK/hp_tuning_job.yaml"; else SPEC="$WORK/custom_job.yaml"; fi

# Checks the job's trainer arguments with the trainer's own parser (trainer.flags.parse_args)
# and, with an output file, writes the job spec (a Vertex AI CustomJobSpec in YAML: block
# style, every string a double-quoted scalar, so any character survives; with HP_TRIALS a
# HyperparameterTuningJob whose trialJobSpec is that CustomJobSpec).
# argv: MODE(check|spec) REPO OUT KIND(container|python) IMAGE MACHINE ACC_TYPE ACC_COUNT
#       PACKAGE_URI INPUT_PATH OUTPUT_DIR HP_METRIC HP_TRIALS HP_PARALLEL TRAINER_ARGS...
# (HP_*: empty without --hptune.)
# Exit status 2 with one line on stderr for bad flags; 3 when the trainer printed its --help.
HELPER=$(cat <<'PY'
import contextlib, io, re, sys

(mode, repo, out, kind, image, machine, acc_type, acc_count, package_uri,
 input_path, output_dir, hp_metric, hp_trials, hp_parallel, *trainer) = sys.argv[1:]


def fail(msg):
    print("run_training.sh: " + " ".join(str(msg).split()), file=sys.stderr)
    sys.exit(2)


for a in sys.argv[1:]:
    try:
        a.encode("utf-8")
    except UnicodeEncodeError:
        fail("an argument is not valid UTF-8")
sys.path.insert(0, repo)
try:
    # standard library only (no NumPy, no TensorFlow): any python3 checks the flags; a tuning
    # trial's (trainer.hypertune) are trainer.task's plus --hypertune_metric
    if hp_metric:
        from trainer.hypertune import parse_args
    else:
        from trainer.flags import parse_args
except Exception as e:  # noqa: BLE001 - reported in one line
    fail(f"cannot import the trainer's flag parser from {repo}/trainer "
         f"({type(e).__name__}: {e}); set PYTHON to the project's .venv/bin/python")


# parse_args reports bad flags the argparse way: a message on stderr and SystemExit(2). The
# message is taken from its last line, whatever parser class the trainer uses.
job_args = ["--input_path=" + input_path, "--output_dir=" + output_dir, "--no_progress",
            *(["--hypertune_metric=" + hp_metric] if hp_metric else []), *trainer]
captured = io.StringIO()
try:
    with contextlib.redirect_stderr(captured):
        ns = parse_args(job_args)
except SystemExit as e:
    if e.code in (0, None):  # --help / -h among the trainer flags: the help went to stdout
        sys.exit(3)
    lines = [line for line in captured.getvalue().splitlines() if line.strip()]
    message = re.sub(r"^.*?: error: ", "", lines[-1]) if lines else f"exit status {e.code}"
    message = re.sub(r"\s*\(see --help\)$", "", message)
    fail(f"bad trainer flags: {message} (python -m {'trainer.hypertune' if hp_metric else 'trainer.task'} --help lists them)")
except Exception as e:  # noqa: BLE001 - reported in one line
    fail(f"bad trainer flags: {type(e).__name__}: {e}")
if ns.input_path != input_path or ns.output_dir != output_dir:
    fail("a trainer flag after -- sets --input_path/--output_dir; give those before --")
# The searched flags and their ranges (trainer.tune.SearchSpace's): Vertex AI appends
# --NAME=VALUE to each trial's args, so a value given after -- would be overridden.
weight = ("unobserved_weight", 0.001, 1.0) if ns.objective == "wals" else ("alpha", 0.3, 1000.0)
SEARCHED = [("n_embeds", "INTEGER", 8, 96, "UNIT_LOG_SCALE"),
            ("regularization", "DOUBLE", *((0.001, 10.0) if ns.objective == "wals" else (0.1, 1000.0)),
             "UNIT_LOG_SCALE"),
            (weight[0], "DOUBLE", weight[1], weight[2], "UNIT_LOG_SCALE"),
            ("num_epochs", "INTEGER", 2, 20, "UNIT_LINEAR_SCALE")]
if hp_metric:
    for name, *_ in SEARCHED:
        if any(a == "--" + name or a.startswith(f"--{name}=") for a in trainer):
            fail(f"--{name} is searched by --hptune; do not give it after --")
if mode == "check":
    sys.exit(0)

NONPRINTING = {"\u0085", "\u2028", "\u2029", "\ufeff"}


def q(s):
    """A YAML double-quoted scalar holding exactly s."""
    out = []
    for c in s:
        o = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif 0x20 <= o < 0x7F or (o >= 0xA0 and c.isprintable() and c not in NONPRINTING):
            out.append(c)
        elif o <= 0xFF:
            out.append(f"\\x{o:02x}")
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return '"' + "".join(out) + '"'


lines = ["workerPoolSpecs:", "- machineSpec:", f"    machineType: {q(machine)}"]
if int(acc_count) > 0:
    lines += [f"    acceleratorType: {q(acc_type)}", f"    acceleratorCount: {int(acc_count)}"]
lines.append("  replicaCount: 1")
module = "trainer.hypertune" if hp_metric else "trainer.task"  # a tuning trial, or the trainer
if kind == "container":
    lines += ["  containerSpec:", f"    imageUri: {q(image)}"]
    if hp_metric:  # replaces the image's ENTRYPOINT (python -m trainer.task)
        lines += ["    command:", f"    - {q('python')}", f"    - {q('-m')}", f"    - {q(module)}"]
    lines.append("    args:")
else:
    lines += ["  pythonPackageSpec:", f"    executorImageUri: {q(image)}", "    packageUris:",
              f"    - {q(package_uri)}", f"    pythonModule: {q(module)}", "    args:"]
lines += [f"    - {q(a)}" for a in job_args]
if hp_metric:
    # A HyperparameterTuningJob: studySpec (algorithm unset: Vertex AI's default, Bayesian
    # optimization), trialJobSpec = the CustomJobSpec above plus baseOutputDirectory, so each
    # trial gets AIP_MODEL_DIR=OUTPUT_DIR/TRIAL_ID/model/.
    study = ["studySpec:", "  metrics:", f"  - metricId: {q(hp_metric)}", "    goal: MAXIMIZE",
             "  parameters:"]
    for name, kind_, low, high, scale in SEARCHED:
        spec = "integerValueSpec" if kind_ == "INTEGER" else "doubleValueSpec"
        study += [f"  - parameterId: {q(name)}", f"    {spec}:", f"      minValue: {low!r}",
                  f"      maxValue: {high!r}", f"    scaleType: {scale}"]
    lines = [f"maxTrialCount: {int(hp_trials)}", f"parallelTrialCount: {int(hp_parallel)}", *study,
             "trialJobSpec:", *["  " + line for line in lines],
             "  baseOutputDirectory:", f"    outputUriPrefix: {q(output_dir)}"]
with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
PY
)

if [[ -n "$IMAGE" ]]; then KIND=container; JOB_IMAGE="$IMAGE"; else KIND=python; JOB_IMAGE="$PREBUILT_IMAGE"; fi
helper() {  # helper MODE [PACKAGE_URI]
  local rc=0
  "$PYTHON" -c "$HELPER" "$1" "$REPO" "$SPEC" "$KIND" "$JOB_IMAGE" "$MACHINE_TYPE" "$ACCELERATOR_TYPE" \
    "$ACCELERATOR_COUNT" "${2:-}" "$INPUT_PATH" "$OUTPUT_DIR" "$HPTUNE_METRIC" "$HPTUNE" "$PARALLEL_TRIALS" \
    "${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}" || rc=$?
  if [[ $rc == 3 ]]; then echo "(the trainer's --help, from trainer/flags.py; nothing was submitted)" >&2; exit 0; fi
  [[ $rc == 0 ]] || exit 2
}
# Before anything is built, uploaded or submitted.
helper check

if [[ -n "$PREBUILT_IMAGE" ]]; then
  if [[ "$PREBUILT_IMAGE" =~ /vertex-ai/training/tf-(cpu|gpu)\.2-([0-9]+)\. ]] && (( BASH_REMATCH[2] <= 17 )); then
    echo "run_training.sh: warning: $PREBUILT_IMAGE: Vertex AI lists end of availability 2026-07-11 or earlier for TensorFlow <= 2.17 training images; the trainer is tested on TF 2.21 (use --image, docs/CLOUD.md)" >&2
  fi
  if [[ -z "$PACKAGE_URI" ]]; then
    [[ -f setup.py ]] || die "setup.py not found: cannot build the trainer package (or pass --package_uri)"
    # The trainer-only sdist (packages trainer + schemas, no Beam/tf.Transform requirements: the
    # prebuilt image has TensorFlow). Built even with --dry_run (locally; egg-info goes to the
    # temporary dir, not the work tree) so the printed URI is the real one.
    BUILD=(env GA_RECS_TRAINER_ONLY=1 "$PYTHON" setup.py -q egg_info --egg-base "$WORK"
           sdist --formats=gztar --dist-dir "$WORK/dist")
    show "${BUILD[@]}"
    "${BUILD[@]}" >&2 || die "building the trainer sdist failed (see above)"
    SDIST="$(ls "$WORK"/dist/*.tar.gz 2>/dev/null | head -n 1)"
    [[ -f "$SDIST" ]] || die "sdist build produced no .tar.gz"
    PACKAGE_URI="${STAGING%/}/${JOB_NAME}/$(basename "$SDIST")"
    helper spec "$PACKAGE_URI"
    run gcloud storage cp "$SDIST" "$PACKAGE_URI"
  else
    helper spec "$PACKAGE_URI"
  fi
else
  helper spec
fi

if [[ -n "$HPTUNE" ]]; then
  echo "# $SPEC (the hyperparameter tuning job spec given to --config):"
  cat "$SPEC"
  run gcloud ai hp-tuning-jobs create \
    --project="$PROJECT" \
    --region="$REGION" \
    --display-name="$JOB_NAME" \
    --max-trial-count="$HPTUNE" \
    --parallel-trial-count="$PARALLEL_TRIALS" \
    --config="$SPEC"
else
  echo "# $SPEC (the job spec given to --config):"
  cat "$SPEC"
  run gcloud ai custom-jobs create \
    --project="$PROJECT" \
    --region="$REGION" \
    --display-name="$JOB_NAME" \
    --config="$SPEC"
fi

if [[ "$DRY_RUN" == 1 ]]; then
  echo "(dry run: nothing was uploaded or submitted)" >&2
elif [[ -n "$HPTUNE" ]]; then
  echo "Submitted. Follow it with: gcloud ai hp-tuning-jobs list --project=$PROJECT --region=$REGION --filter=displayName=$JOB_NAME" >&2
  echo "and: gcloud ai hp-tuning-jobs describe JOB_ID --project=$PROJECT --region=$REGION (each trial's $HPTUNE_METRIC)" >&2
else
  echo "Submitted. Follow it with: gcloud ai custom-jobs list --project=$PROJECT --region=$REGION --filter=displayName=$JOB_NAME" >&2
  echo "and: gcloud ai custom-jobs stream-logs JOB_ID --project=$PROJECT --region=$REGION" >&2
fi
