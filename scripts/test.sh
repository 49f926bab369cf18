#!/usr/bin/env bash
# Sets up what is missing, then runs the whole test suite (optimised: training code
# is too slow to test unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo test --release --workspace "$@"
