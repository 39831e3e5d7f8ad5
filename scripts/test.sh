#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing,
# then formatting, lints, unit tests once, and the integration tests (real
# PostgreSQL, real TLS) once per PostgreSQL major of the matrix.
#
# TEST_PG_MAJORS="15 17 18" (the default) names the cluster versions; e.g.
# TEST_PG_MAJORS=15 for a quick local run. Each run sets TEST_PG_MAJOR for
# the test binaries (tests/common/mod.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

majors=${TEST_PG_MAJORS:-15 17 18}
read -r -a majors <<<"${majors//,/ }"
((${#majors[@]})) || { echo "test.sh: TEST_PG_MAJORS names no version" >&2; exit 2; }
started=$SECONDS

echo "==> dependencies"
# tests/matrix.rs runs psql 18 (libpq 18) against every cluster version,
# so 18 is installed even when TEST_PG_MAJORS leaves it out.
pg_list=$(IFS=,; echo "${majors[*]},18")
scripts/ensure-deps.sh --pg "$pg_list"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy --all-targets -- -D warnings"
t=$SECONDS
cargo clippy --all-targets --locked -- -D warnings
echo "==> clippy took $((SECONDS - t)) s"

# Everything is compiled once here; the runs below only execute.
echo "==> cargo test --no-run (build all test targets)"
t=$SECONDS
cargo test --all-targets --locked --no-run
echo "==> build took $((SECONDS - t)) s"

echo "==> unit tests (lib, bins, benches in test mode)"
cargo test --locked --lib --bins --benches

# Plain `cargo test`: the tests of one binary share one process and so one
# throwaway cluster (nextest would start a cluster per test). A failing
# version does not stop the others: the summary says which failed.
failed=()
for major in "${majors[@]}"; do
    echo "==> integration tests against PostgreSQL $major (TEST_PG_MAJOR=$major)"
    t=$SECONDS
    # --no-fail-fast: a failing test binary must not hide the ones after it.
    if TEST_PG_MAJOR=$major cargo test --locked --no-fail-fast --test '*'; then
        echo "==> PostgreSQL $major: passed in $((SECONDS - t)) s"
    else
        echo "==> PostgreSQL $major: FAILED after $((SECONDS - t)) s"
        failed+=("$major")
    fi
done

echo "==> total $((SECONDS - started)) s"
if ((${#failed[@]})); then
    echo "==> integration tests failed against PostgreSQL ${failed[*]}" >&2
    exit 1
fi
