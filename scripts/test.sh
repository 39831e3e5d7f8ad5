#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing,
# then formatting, lints, unit tests once, and the integration tests (real
# PostgreSQL, real TLS) once per PostgreSQL major of the matrix.
#
# TEST_PG_MAJORS="15 17 18" (the default) names the cluster versions; e.g.
# TEST_PG_MAJORS=15 for a quick local run. Each run sets TEST_PG_MAJOR for
# the integration binary (tests/it/common/mod.rs).
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
# tests/it/matrix.rs runs psql 18 (libpq 18) against every cluster version,
# and the proxy-mode run uses an 18 cluster, so 18 is installed even when
# TEST_PG_MAJORS leaves it out.
pg_list=$(IFS=,; echo "${majors[*]},18")
scripts/ensure-deps.sh --pg "$pg_list"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

# Lints and the build in one pass. `cargo clippy` would compile every
# dependency a second time, in check mode, only to throw it away; instead
# every workspace crate is compiled once through clippy-driver (what `cargo
# clippy` itself sets as the workspace's compiler wrapper), so the same lints
# deny the build, and the dependencies are compiled once, for the tests.
# The variables stay set for the steps below: cargo counts the wrapper in
# its fingerprints, and would otherwise build everything again. Equivalent
# to `cargo clippy --workspace --all-targets -- -D warnings` followed by
# `cargo test --workspace --all-targets --no-run`.
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
[[ -x $clippy_driver ]] || { echo "test.sh: $clippy_driver is missing (rustup component add clippy)" >&2; exit 1; }
export RUSTC_WORKSPACE_WRAPPER=$clippy_driver
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
echo "==> lints and build: every target of every crate, through clippy-driver with -D warnings"
t=$SECONDS
cargo test --workspace --all-targets --locked --no-run
echo "==> lints and build took $((SECONDS - t)) s"

echo "==> unit tests (lib, bins, benches in test mode, every crate)"
cargo test --workspace --locked --lib --bins --benches

# The integration suite is one binary (tests/it/main.rs), run with plain
# `cargo test`: its tests share one process and so one throwaway cluster
# (nextest would start a cluster per test). A failing run does not stop the
# others: the summary says which failed.
#
# The first run executes every module. The later runs (other majors, proxy
# mode) skip the modules whose outcome cannot depend on them, so the time
# goes where the runs can differ:
#   no cluster, or a cluster of their own: cli readme package
#   properties fuzz_seeds
#   sandbox faults
#   the proxy's own machinery, independent of the cluster's version and of
#   the authentication mode (the login path is covered by proxy_auth, leaks
#   and wire in proxy mode): logs threads tls floods fleet admin
#   proxy_auth sets proxy mode itself: once is all it can differ; suspend
#   refuses before any cluster or authentication is involved
once=(cli readme package properties fuzz_seeds sandbox faults logs threads tls floods fleet admin proxy_auth suspend)
#   in proxy mode, what only reads statements (the gate does not see the
#   login): quota escapes encodings
passthrough_only=(quota escapes encodings)
failed=()
# integration MODE MAJOR [SKIP...]: one run of the integration binary,
# without the modules named.
integration() {
    local mode=$1 major=$2 t=$SECONDS
    shift 2
    local label="PostgreSQL $major, $mode authentication"
    local skips=() module
    for module in "$@"; do skips+=(--skip "$module::"); done
    echo "==> integration tests against $label (TEST_PG_MAJOR=$major TEST_AUTH_MODE=$mode)${*:+, without: $*}"
    if TEST_PG_MAJOR=$major TEST_AUTH_MODE=$mode cargo test --locked --test it -- "${skips[@]}"; then
        echo "==> $label: passed in $((SECONDS - t)) s"
    else
        echo "==> $label: FAILED after $((SECONDS - t)) s"
        failed+=("$major ($mode)")
    fi
}
first=1
for mode in "${modes[@]}"; do
    case $mode in
    passthrough)
        for major in "${majors[@]}"; do
            if ((first)); then
                integration passthrough "$major"
            else
                integration passthrough "$major" "${once[@]}"
            fi
            first=0
        done
        ;;
    proxy)
        if ((first)); then
            integration proxy "$proxy_major"
        else
            integration proxy "$proxy_major" "${once[@]}" "${passthrough_only[@]}"
        fi
        first=0
        ;;
    esac
done

echo "==> total $((SECONDS - started)) s"
if ((${#failed[@]})); then
    printf -v list '%s, ' "${failed[@]}"
    echo "==> integration tests failed against PostgreSQL ${list%, }" >&2
    exit 1
fi
