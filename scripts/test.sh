#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing,
# then formatting, lints, unit tests once, and the integration tests (real
# PostgreSQL, real TLS) once per PostgreSQL major of the matrix.
#
# TEST_PG_MAJORS="15 17 18" (the default) names the cluster versions; e.g.
# TEST_PG_MAJORS=15 for a quick local run. Each run sets TEST_PG_MAJOR for
# the test binaries (tests/common/mod.rs).
#
# TEST_AUTH_MODES="passthrough proxy" (the default) names the authentication
# modes: passthrough runs against every version above; proxy (pgtier checks
# SCRAM itself, auth.mode = "proxy") runs the integration tests once more,
# against PostgreSQL 18. Each run sets TEST_AUTH_MODE for the test binaries.
# E.g. TEST_AUTH_MODES=proxy for the proxy-mode run alone.
set -euo pipefail
cd "$(dirname "$0")/.."

majors=${TEST_PG_MAJORS:-15 17 18}
read -r -a majors <<<"${majors//,/ }"
((${#majors[@]})) || { echo "test.sh: TEST_PG_MAJORS names no version" >&2; exit 2; }
modes=${TEST_AUTH_MODES:-passthrough proxy}
read -r -a modes <<<"${modes//,/ }"
((${#modes[@]})) || { echo "test.sh: TEST_AUTH_MODES names no mode" >&2; exit 2; }
for mode in "${modes[@]}"; do
    case $mode in
    passthrough | proxy) ;;
    *) echo "test.sh: TEST_AUTH_MODES: unknown mode \"$mode\" (passthrough, proxy)" >&2; exit 2 ;;
    esac
done
# The one version the proxy-mode run uses.
proxy_major=18
started=$SECONDS

echo "==> dependencies"
# tests/matrix.rs runs psql 18 (libpq 18) against every cluster version,
# and the proxy-mode run uses an 18 cluster, so 18 is installed even when
# TEST_PG_MAJORS leaves it out.
pg_list=$(IFS=,; echo "${majors[*]},18")
scripts/ensure-deps.sh --pg "$pg_list"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

# --workspace: the product and its tooling crates (sandbox, testkit, bench).
echo "==> cargo clippy --workspace --all-targets -- -D warnings"
t=$SECONDS
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> clippy took $((SECONDS - t)) s"

# Everything is compiled once here; the runs below only execute.
echo "==> cargo test --workspace --no-run (build all test targets)"
t=$SECONDS
cargo test --workspace --all-targets --locked --no-run
echo "==> build took $((SECONDS - t)) s"

echo "==> unit tests (lib, bins, benches in test mode, every crate)"
cargo test --workspace --locked --lib --bins --benches

# Plain `cargo test`: the tests of one binary share one process and so one
# throwaway cluster (nextest would start a cluster per test). A failing
# run does not stop the others: the summary says which failed.
failed=()
# integration MODE MAJOR: one run of every integration test binary.
integration() {
    local mode=$1 major=$2 t=$SECONDS
    local label="PostgreSQL $major, $mode authentication"
    echo "==> integration tests against $label (TEST_PG_MAJOR=$major TEST_AUTH_MODE=$mode)"
    # --no-fail-fast: a failing test binary must not hide the ones after it.
    if TEST_PG_MAJOR=$major TEST_AUTH_MODE=$mode cargo test --locked --no-fail-fast --test '*'; then
        echo "==> $label: passed in $((SECONDS - t)) s"
    else
        echo "==> $label: FAILED after $((SECONDS - t)) s"
        failed+=("$major ($mode)")
    fi
}
for mode in "${modes[@]}"; do
    case $mode in
    passthrough)
        for major in "${majors[@]}"; do
            integration passthrough "$major"
        done
        ;;
    proxy) integration proxy "$proxy_major" ;;
    esac
done

echo "==> total $((SECONDS - started)) s"
if ((${#failed[@]})); then
    printf -v list '%s, ' "${failed[@]}"
    echo "==> integration tests failed against PostgreSQL ${list%, }" >&2
    exit 1
fi
