#!/usr/bin/env bash
# Makes sure the programs pgtier's tests, demo and benchmarks need are
# installed: PostgreSQL's server binaries (initdb, postgres), psql and
# pgbench, libclang (pg_query's build generates its bindings with it), and
# with --bench also pgbouncer (the comparison baseline).
#
# Idempotent and fast when everything is present (no apt-get update then).
# As root on Debian/Ubuntu it installs what is missing; otherwise it prints
# what to install and exits 1.
#
# Server binaries are looked for as the sandbox (src/sandbox/cluster.rs)
# looks for them: $PG_BIN, `pg_config --bindir`, the newest
# /usr/lib/postgresql/*/bin, then PATH.
set -euo pipefail

want_bench=0
for arg in "$@"; do
    case "$arg" in
        --bench) want_bench=1 ;;
        -h|--help)
            sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) echo "ensure-deps.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

# Prints the directory holding initdb, or nothing.
pg_bin_dir() {
    if [[ -n "${PG_BIN:-}" ]]; then
        [[ -x "$PG_BIN/initdb" ]] && echo "$PG_BIN"
        return 0
    fi
    local dir
    if dir=$(pg_config --bindir 2>/dev/null) && [[ -x "$dir/initdb" ]]; then
        echo "$dir"
        return 0
    fi
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5V | tail -n1 || true)
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then
        echo "$dir"
        return 0
    fi
    if dir=$(command -v initdb 2>/dev/null); then
        dirname "$(readlink -f "$dir")"
    fi
}

# Whether program $1 is in the PostgreSQL bin dir or on PATH.
have_program() {
    local bin
    bin=$(pg_bin_dir)
    [[ -n "$bin" && -x "$bin/$1" ]] || command -v "$1" >/dev/null 2>&1
}

# Whether a libclang shared library is installed where clang-sys (bindgen,
# used by pg_query's build) looks: $LIBCLANG_PATH, LLVM's own directories and
# the system library directories.
have_libclang() {
    local dir
    for dir in ${LIBCLANG_PATH:-} /usr/lib/llvm-*/lib /usr/lib/*-linux-gnu /usr/lib64 /usr/lib \
        /usr/local/lib; do
        if compgen -G "$dir/libclang.so*" >/dev/null || compgen -G "$dir/libclang-[0-9]*.so*" >/dev/null; then
            return 0
        fi
    done
    return 1
}

missing() {
    local -a packages=()
    local bin
    bin=$(pg_bin_dir)
    if [[ -z "$bin" || ! -x "$bin/postgres" ]]; then
        packages+=(postgresql postgresql-contrib)
    fi
    have_program psql || packages+=(postgresql-client)
    have_program pgbench || packages+=(postgresql-contrib)
    have_libclang || packages+=(libclang-dev)
    if [[ "$want_bench" == 1 ]] && ! command -v pgbouncer >/dev/null 2>&1 \
        && [[ ! -x /usr/sbin/pgbouncer ]]; then
        packages+=(pgbouncer)
    fi
    # The server runs as `postgres` when the tests run as root.
    if [[ "$(id -u)" == 0 ]] && ! id -u postgres >/dev/null 2>&1; then
        packages+=(postgresql)
    fi
    if ((${#packages[@]})); then
        printf '%s\n' "${packages[@]}" | sort -u | tr '\n' ' '
    fi
}

todo=$(missing)
if [[ -z "$todo" ]]; then
    echo "ensure-deps: PostgreSQL binaries present in $(pg_bin_dir); libclang present"
    exit 0
fi

if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-deps: missing: $todo" >&2
    echo "ensure-deps: install them (Debian/Ubuntu: sudo apt-get install -y $todo)," >&2
    echo "ensure-deps: or set PG_BIN to a directory holding initdb and postgres." >&2
    exit 1
fi

echo "ensure-deps: installing $todo"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # $todo is a list of package names
apt-get install -y -qq --no-install-recommends $todo >/dev/null
# Debian's postgresql package starts a system cluster on 5432; we don't need
# it, but leave it alone: proxy.toml's example config points at it.

todo=$(missing)
if [[ -n "$todo" ]]; then
    echo "ensure-deps: still missing after apt-get install: $todo" >&2
    exit 1
fi
if [[ "$(id -u)" == 0 ]] && ! id -u postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
echo "ensure-deps: PostgreSQL binaries present in $(pg_bin_dir); libclang present"
