#!/usr/bin/env bash
# Makes sure the programs pgtier's tests, demo and benchmarks need are
# installed: PostgreSQL's server binaries (initdb, postgres), psql and
# pgbench, and with --bench also pgbouncer (the comparison baseline).
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

missing() {
    local -a packages=()
    local bin
    bin=$(pg_bin_dir)
    if [[ -z "$bin" || ! -x "$bin/postgres" ]]; then
        packages+=(postgresql postgresql-contrib)
    fi
    have_program psql || packages+=(postgresql-client)
    have_program pgbench || packages+=(postgresql-contrib)
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

# Installs the Debian packages `missing` names; exits 1 with what to install
# when it cannot (not root, no apt-get).
install_missing_packages() {
    local todo=$1
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
    # Debian's postgresql package starts a system cluster on 5432; we don't
    # need it, but leave it alone: proxy.toml's example config points at it.
    todo=$(missing)
    if [[ -n "$todo" ]]; then
        echo "ensure-deps: still missing after apt-get install: $todo" >&2
        exit 1
    fi
    if [[ "$(id -u)" == 0 ]] && ! id -u postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
}

todo=$(missing)
if [[ -n "$todo" ]]; then
    install_missing_packages "$todo"
fi
echo "ensure-deps: PostgreSQL binaries present in $(pg_bin_dir)"

# --- Python clients -------------------------------------------------------
# Some tests drive the proxy with psycopg 3 (pure-Python implementation over
# the system libpq): a client that waits on the socket itself, unlike psql.
# It lives in a virtualenv under .deps/ (git-ignored), pinned, installed once.
PSYCOPG_VERSION=3.3.9
venv="$(cd "$(dirname "$0")/.." && pwd)/.deps/venv"
if ! "$venv/bin/python" -c "import psycopg, sys; sys.exit(psycopg.__version__ != '$PSYCOPG_VERSION')" 2>/dev/null; then
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "ensure-deps: installing python3-venv"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
        else
            echo "ensure-deps: missing: python3 with the venv module (Debian/Ubuntu: sudo apt-get install -y python3-venv)" >&2
            exit 1
        fi
    fi
    echo "ensure-deps: installing psycopg $PSYCOPG_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "psycopg==$PSYCOPG_VERSION"
fi
echo "ensure-deps: psycopg $PSYCOPG_VERSION present in $venv"
