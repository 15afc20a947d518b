#!/usr/bin/env bash
# GA360 -> recommendations.
#
#   ./run_dataflow.sh                      local run on the bundled sample (FnApiRunner), then training
#   ./run_dataflow.sh --sample_schema ga4  the same, on the sample's GA4 form (same counts and median)
#   ./run_dataflow.sh --runner DataflowRunner --project P --region R \
#       --temp_location gs://B/tmp --output_dir gs://B/out --bq_table P.D.ga_sessions_* [flags]
#   ./run_dataflow.sh --help               every flag
#
# Flags other than the ones below go to `python -m preprocess` unchanged.
#   --dry_run              print the commands (anywhere on the line); installs and runs nothing
#   --skip_training        local run: stop after preprocessing (also skipped with your own --output_dir)
#   --sample_schema S      local run on the bundled sample: ga360 (default; GA360 ga_sessions rows) or
#                          ga4 (GA4 events rows of the same simulated visits, read with --item_source
#                          event_param:article_id --duration engagement_time)
# Relative local paths (--input, --output_dir, --setup_file, --temp_location, ...; --flag VALUE
# or --flag=VALUE) are relative to the directory you call the script from; gs:// and other
# URLs and absolute paths are passed as they are. The commands run in the repository.
# On Dataflow the workers install this package from --setup_file (added for you), or use a
# custom worker image given with --sdk_container_image (see Dockerfile), which starts faster.
set -euo pipefail
die() { echo "run_dataflow.sh: $*" >&2; exit 2; }
CALLER_PWD="$PWD"
REPO="$(cd "$(dirname "$0")" && pwd)"

SAMPLE=data/ga_sample/ga_sessions_sample.json
SAMPLE_GA4=data/ga_sample/ga4_events_sample.ndjson
LOCAL_OUTPUT=output/preprocess
LOCAL_MODEL=output/model

# Flags whose values are local paths when they are not URLs: a relative one is resolved against
# the directory the script was called from (the script itself runs in the repository).
PATH_FLAGS=" input output_dir setup_file temp_location staging_location requirements_file extra_package \
requirements_cache template_location dataflow_job_file profile_location file_to_stage artifacts_dir \
output_executable_path sdk_location "
is_path_flag() { [[ "$PATH_FLAGS" == *" $1 "* ]]; }
abspath() {  # abspath FLAG VALUE: VALUE, absolute if it is a relative local path
  local v="$2"
  case "$v" in
    "" | /* | *://*) ;;                                  # absolute, gs://, s3://, http://, ...
    default | container) [ "$1" = sdk_location ] || v="$CALLER_PWD/$v" ;;  # Beam's keywords
    "~") v="$HOME" ;;
    "~/"*) v="$HOME/${v#\~/}" ;;
    *) while [[ "$v" == ./* ]]; do v="${v#./}"; done
       v="$CALLER_PWD/$v" ;;
  esac
  printf '%s' "${v%/.}"
}

dry_run=0
skip_training=0
sample_schema=ga360
sample_schema_given=0
show_help=0
runner=""
args=()
# --dry_run anywhere means: print the commands, install and run nothing.
for a in "$@"; do [ "$a" = --dry_run ] && dry_run=1; done
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run) ;;
    --skip_training) skip_training=1 ;;
    --sample_schema=*) sample_schema="${1#*=}"; sample_schema_given=1 ;;
    --sample_schema)
      [ $# -ge 2 ] && [ -n "$2" ] && [[ "$2" != --* ]] || die "--sample_schema needs a value (ga360 or ga4)"
      sample_schema="$2"; sample_schema_given=1; shift ;;
    -h|--help) show_help=1 ;;
    --*=*)
      name="${1%%=*}"; name="${name#--}"; value="${1#*=}"
      [ "$name" = runner ] && runner="$value"
      if is_path_flag "$name"; then
        [ -n "$value" ] || die "--$name needs a value"
        args+=("--$name=$(abspath "$name" "$value")")
      else
        args+=("$1")
      fi ;;
    --*)
      name="${1#--}"
      if [ "$name" = runner ] || is_path_flag "$name"; then
        [ $# -ge 2 ] && [ -n "$2" ] && [[ "$2" != --* ]] || die "--$name needs a value"
        value="$2"; shift
        [ "$name" = runner ] && runner="$value"
        is_path_flag "$name" && value="$(abspath "$name" "$value")"
        args+=("--$name" "$value")
      else
        args+=("$1")
      fi ;;
    *) args+=("$1") ;;
  esac
  shift
done
cd "$REPO"
case "$sample_schema" in
  ga360 | ga4) ;;
  *) die "--sample_schema must be ga360 or ga4, got '$sample_schema'" ;;
esac

if [ "$show_help" = 1 ]; then
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$REPO/$(basename "$0")"
  if [ ! -x .venv/bin/python ]; then
    if [ "$dry_run" = 1 ]; then
      echo "(dry run: ./install.sh not run; the list of every flag needs it)"; exit 0
    fi
    ./install.sh >&2
  fi
  exec .venv/bin/python -m preprocess --help
fi

has_flag() {  # has_flag NAME: is --NAME among the passed flags?
  local a
  for a in "${args[@]+"${args[@]}"}"; do
    case "$a" in "--$1"|"--$1="*) return 0 ;; esac
  done
  return 1
}

run() {
  if [ "$dry_run" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
[ "$dry_run" = 0 ] || echo "(dry run: nothing is installed or run; the commands run in $REPO)" >&2

if [ "$dry_run" = 0 ] && [ ! -x .venv/bin/python ]; then
  echo "First run: installing into ./.venv (about 3 minutes)..." >&2
  ./install.sh
fi
PY=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"

own_input=0
has_flag input || has_flag bq_table || has_flag ga4_table || has_flag query && own_input=1
if [ "$sample_schema_given" = 1 ] && { [ "$own_input" = 1 ] || [ "$runner" = "DataflowRunner" ]; }; then
  die "--sample_schema only applies to the local run on the bundled sample (no --input, --bq_table, --ga4_table or --query)"
fi

if [ "$runner" = "DataflowRunner" ]; then
  for f in project region temp_location output_dir; do
    has_flag "$f" || { echo "error: --runner DataflowRunner needs --$f" >&2; exit 2; }
  done
  has_flag bq_table || has_flag ga4_table || has_flag query || has_flag input || {
    echo "error: give an input: --bq_table, --ga4_table, --query or --input gs://..." >&2; exit 2; }
  if ! has_flag sdk_container_image && ! has_flag setup_file; then
    args+=(--setup_file ./setup.py)
  fi
  run "$PY" -m preprocess "${args[@]}"
  exit $?
fi

# Local run (FnApiRunner, the in-process runner that works offline).
has_flag runner || args+=(--runner FnApiRunner)
if [ "$own_input" = 0 ]; then
  if [ "$sample_schema" = ga4 ]; then
    SAMPLE="$SAMPLE_GA4"
    # The GA4 form's article ID param and engagement times: the GA360 form's interactions.
    sample_flags=(--input_format ga4_json --item_source event_param:article_id --duration engagement_time)
  else
    sample_flags=(--input_format ga_json)
  fi
  # Made again when missing or older than its generator (a sample of an older generator would
  # not match the other form); generating takes seconds.
  if [ ! -f "$SAMPLE" ] || [ "$SAMPLE" -ot preprocess/sample_data.py ]; then
    echo "Generating the bundled sample's $sample_schema form ($SAMPLE, seeded)..." >&2
    run "$PY" -m preprocess.sample_data --schema "$sample_schema" --output "$SAMPLE"
  fi
  args+=(--input "$SAMPLE" "${sample_flags[@]}")
  # Hold out 20% of each user's interactions so the trainer reports held-out metrics.
  has_flag test_fraction || args+=(--test_fraction 0.2)
fi
own_output=0
has_flag output_dir && own_output=1 || args+=(--output_dir "$LOCAL_OUTPUT")
start=$SECONDS
run "$PY" -m preprocess "${args[@]}"
[ "$dry_run" = 1 ] || echo "Preprocessing took $((SECONDS - start)) s." >&2

if [ "$skip_training" = 0 ] && [ "$own_output" = 0 ]; then
  start=$SECONDS
  run "$PY" -m trainer.task --input_path "$LOCAL_OUTPUT" --output_dir "$LOCAL_MODEL"  # tuned defaults
  [ "$dry_run" = 1 ] || echo "Training took $((SECONDS - start)) s." >&2
  if [ "$dry_run" = 0 ]; then
    echo
    echo "Outputs: $LOCAL_OUTPUT (TFRecords, vocabularies, metadata.json), $LOCAL_MODEL (factors, batch_pred.txt, metrics.json, export/)"
    if [ -f "$LOCAL_MODEL/metrics.json" ]; then
      # The model next to the most-popular baseline, scored on the same held-out users.
      "$PY" - "$LOCAL_MODEL/metrics.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
model, lift = report["metrics"], report.get("lift", {})
baseline = report.get("baselines", {}).get("popularity", {})
show = lambda v: "n/a" if v is None else f"{v:.4f}"
print(f"Held-out metrics, {model['users']} users: model | most-popular baseline | lift = model / baseline")
for name, value in model.items():
    if "@" in name:
        ratio = "-" if name not in lift else "n/a" if lift[name] is None else f"{lift[name]:.2f}x"
        print(f"  {name:<13} {show(value)} | {show(baseline.get(name))} | {ratio}")
PY
    fi
    echo "Recommendations for the first 5 users (visitorId<TAB>contentIds, best first):"
    head -n 5 "$LOCAL_MODEL/batch_pred.txt"
  fi
fi
