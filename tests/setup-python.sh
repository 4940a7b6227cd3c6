#!/usr/bin/env bash
# Creates (once) the Python virtualenv the integration tests use as a non-Rust client:
# target/pyenv, with the packages of tests/python/requirements.txt from PyPI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/target/pyenv"
req="$root/tests/python/requirements.txt"
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
echo "python test environment ready: $venv"
