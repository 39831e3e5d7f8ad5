#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing,
# then formatting, lints, unit and integration tests (real PostgreSQL, real TLS).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> dependencies"
scripts/ensure-deps.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

# Plain `cargo test`: the tests of one binary share one process and so one
# throwaway cluster (nextest would start a cluster per test).
echo "==> cargo test"
cargo test --all-targets --locked
