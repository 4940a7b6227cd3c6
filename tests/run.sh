#!/usr/bin/env bash
# The test command: prepares the Python client environment, then runs every test of the
# workspace (unit and integration) with cargo-nextest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash tests/setup-python.sh
bash tests/setup-tools.sh
bash tests/setup-fhir-examples.sh
bash tests/setup-portal.sh
# One crate, one job: no two modules of a crate import each other (directly or in a ring).
python3 tests/tools/module_cycles.py gateway/src gateway/devkit/src gateway/cli/src proto/src \
  gateway/catalog/src gateway/telemetry/src services/crosscity/src services/bundle/src services/report/src
export TONGBAN_PYTHON="$root/target/pyenv/bin/python"
# Some tests run the `tongban` binary itself (audit verify, a node killed with SIGKILL).
cargo build --quiet -p tongban --bin tongban --features etcd
export TONGBAN_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/tongban"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest not found; falling back to cargo test" >&2
  cargo test --workspace --no-fail-fast "$@"
fi
