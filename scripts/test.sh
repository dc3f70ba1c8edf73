#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need,
# checks formatting and lints, builds the shoal binary, then runs every unit,
# property and multi-process test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
scripts/k8s/validate.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The multi-process tests start the real binary.
cargo build --quiet -p node --bin shoal
cargo test --workspace -- "$@"
