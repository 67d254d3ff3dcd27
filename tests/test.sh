#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the end-to-end tests, which start
# their own private containerd. Must run as root; an end-to-end test that
# would be skipped fails the run instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/test.sh must run as root: the end-to-end tests start containerd and containers" >&2
    exit 1
fi
examples/install-deps.sh
export PODKEEPER_E2E_REQUIRED=1
cargo test --locked "$@"
