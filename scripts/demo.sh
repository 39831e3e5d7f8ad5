#!/usr/bin/env bash
# The newcomer's first command: installs PostgreSQL if missing, then runs
# `pgtier demo` (a throwaway cluster with a free and a standard tenant, TLS,
# and ready-to-paste psql URLs). Ctrl-C removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
exec cargo run --release --locked --bin pgtier -- demo "$@"
