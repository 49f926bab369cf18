#!/usr/bin/env bash
# Sets up what is missing, builds dlc and trains the example job on two local
# worker processes (the embedded resource manager, ring all-reduce).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin dlc
exec target/release/dlc train examples/fashion-mnist-mlp.toml --workers 2 "$@"
