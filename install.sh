#!/usr/bin/env bash
# Creates ./.venv and installs the project with its test tools (about 3 minutes, 3 GB).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import apache_beam, tensorflow_transform, tensorflow; print('installed: beam', apache_beam.__version__, '| tft', tensorflow_transform.__version__, '| tf', tensorflow.__version__)"
