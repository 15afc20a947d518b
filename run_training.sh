#!/usr/bin/env bash
# Submit the WALS trainer (python -m trainer.task) as a Vertex AI custom job on a GPU machine.
#
#   ./run_training.sh --input_path gs://BUCKET/prep --output_dir gs://BUCKET/model \
#       [--project P] [--region us-central1] [--staging gs://BUCKET/staging] \
#       [--machine_type n1-standard-8] [--accelerator_type NVIDIA_TESLA_T4] [--accelerator_count 1] \
#       [--image URI] [--job_name NAME] [--package_uri gs://.../pkg.tar.gz] [--dry_run] \
#       [-- TRAINER FLAGS, e.g. --num_epochs 20 --n_embeds 64]
#
# Steps: build the trainer-only sdist (GA_RECS_TRAINER_ONLY=1 python setup.py sdist: packages
# trainer + schemas; skipped with --package_uri), copy it
# to --staging (gcloud storage cp), then `gcloud ai custom-jobs create` with the prebuilt
# TensorFlow GPU training container running `python -m trainer.task`. --dry_run prints the
# exact commands (shell-quoted, one per line, prefixed "+ ") and runs none of the cloud steps.
# --accelerator_count 0 runs on CPU only. Trainer flags after `--` are passed through; they
# must not contain commas (gcloud's --args list is comma-separated).
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run_training.sh: $*" >&2; exit 2; }

INPUT_PATH=""
OUTPUT_DIR=""
PROJECT="${PROJECT:-${GOOGLE_CLOUD_PROJECT:-}}"
REGION="${REGION:-us-central1}"
STAGING=""
MACHINE_TYPE="n1-standard-8"
ACCELERATOR_TYPE="NVIDIA_TESLA_T4"
ACCELERATOR_COUNT="1"
# Prebuilt Vertex AI training image: TensorFlow 2.17, GPU, Python 3.10.
IMAGE="us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest"
JOB_NAME="wals-trainer-$(date -u +%Y%m%d-%H%M%S)"
PACKAGE_URI=""
DRY_RUN=0
TRAINER_ARGS=()

need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --input_path) need "$@"; INPUT_PATH="$2"; shift 2 ;;
    --output_dir) need "$@"; OUTPUT_DIR="$2"; shift 2 ;;
    --project) need "$@"; PROJECT="$2"; shift 2 ;;
    --region) need "$@"; REGION="$2"; shift 2 ;;
    --staging) need "$@"; STAGING="$2"; shift 2 ;;
    --machine_type) need "$@"; MACHINE_TYPE="$2"; shift 2 ;;
    --accelerator_type) need "$@"; ACCELERATOR_TYPE="$2"; shift 2 ;;
    --accelerator_count) need "$@"; ACCELERATOR_COUNT="$2"; shift 2 ;;
    --image) need "$@"; IMAGE="$2"; shift 2 ;;
    --job_name) need "$@"; JOB_NAME="$2"; shift 2 ;;
    --package_uri) need "$@"; PACKAGE_URI="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; TRAINER_ARGS=("$@"); break ;;
    *) die "unknown option $1 (trainer flags go after --)" ;;
  esac
done

[[ -n "$INPUT_PATH" ]] || die "--input_path is required (the preprocessing output, gs://...)"
[[ -n "$OUTPUT_DIR" ]] || die "--output_dir is required (gs://...)"
[[ "$INPUT_PATH" == gs://* ]] || die "--input_path must be a gs:// path (the job cannot read local files)"
[[ "$OUTPUT_DIR" == gs://* ]] || die "--output_dir must be a gs:// path"
if [[ -z "$PROJECT" ]] && command -v gcloud >/dev/null 2>&1; then
  PROJECT="$(gcloud config get-value project 2>/dev/null || true)"
fi
[[ -n "$PROJECT" ]] || die "no project: pass --project or set GOOGLE_CLOUD_PROJECT"
[[ "$ACCELERATOR_COUNT" =~ ^[0-9]+$ ]] || die "--accelerator_count must be an integer"
STAGING="${STAGING:-${OUTPUT_DIR%/}/staging}"
[[ "$STAGING" == gs://* ]] || die "--staging must be a gs:// path"
for a in "${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}"; do
  [[ "$a" != *,* ]] || die "trainer flag '$a' contains a comma (not expressible in gcloud --args)"
  case "$a" in --input_path|--input_path=*|--output_dir|--output_dir=*)
    die "give --input_path/--output_dir before --, not as trainer flags" ;;
  esac
done

# Prints a command as one shell-quoted line: safe words as they are, others in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() { printf '+'; for a in "$@"; do printf ' '; quote "$a"; done; printf '\n'; }
run() { show "$@"; [[ "$DRY_RUN" == 1 ]] || "$@"; }

cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[[ -x .venv/bin/python && "${PYTHON}" == python3 ]] && PYTHON=.venv/bin/python

if [[ -z "$PACKAGE_URI" ]]; then
  [[ -f setup.py ]] || die "setup.py not found: cannot build the trainer package (or pass --package_uri)"
  DIST_DIR="$(mktemp -d)"
  trap 'rm -rf "$DIST_DIR"' EXIT
  # The trainer-only sdist (packages trainer + schemas, no Beam/tf.Transform requirements: the
  # prebuilt image has TensorFlow). Built even with --dry_run (locally; egg-info goes to the
  # temporary dir, not the work tree) so the printed URI is the real one.
  BUILD=(env GA_RECS_TRAINER_ONLY=1 "$PYTHON" setup.py -q egg_info --egg-base "$DIST_DIR"
         sdist --formats=gztar --dist-dir "$DIST_DIR")
  show "${BUILD[@]}"
  "${BUILD[@]}" >&2
  SDIST="$(ls "$DIST_DIR"/*.tar.gz | head -n 1)"
  [[ -f "$SDIST" ]] || die "sdist build produced no .tar.gz"
  PACKAGE_URI="${STAGING%/}/${JOB_NAME}/$(basename "$SDIST")"
  run gcloud storage cp "$SDIST" "$PACKAGE_URI"
fi

POOL="machine-type=${MACHINE_TYPE},replica-count=1"
if [[ "$ACCELERATOR_COUNT" -gt 0 ]]; then
  POOL="${POOL},accelerator-type=${ACCELERATOR_TYPE},accelerator-count=${ACCELERATOR_COUNT}"
fi
POOL="${POOL},executor-image-uri=${IMAGE},python-module=trainer.task"

ARGS="--input_path=${INPUT_PATH},--output_dir=${OUTPUT_DIR},--no_progress"
for a in "${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}"; do ARGS="${ARGS},${a}"; done

run gcloud ai custom-jobs create \
  --project="$PROJECT" \
  --region="$REGION" \
  --display-name="$JOB_NAME" \
  --python-package-uris="$PACKAGE_URI" \
  --worker-pool-spec="$POOL" \
  --args="$ARGS"

if [[ "$DRY_RUN" == 1 ]]; then
  echo "(dry run: nothing was submitted)" >&2
else
  echo "Submitted. Follow it with: gcloud ai custom-jobs list --project=$PROJECT --region=$REGION --filter=displayName=$JOB_NAME" >&2
  echo "and: gcloud ai custom-jobs stream-logs JOB_ID --project=$PROJECT --region=$REGION" >&2
fi
