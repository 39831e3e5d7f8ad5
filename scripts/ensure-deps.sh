#!/usr/bin/env bash
# Installs what pgtier's demo, tests and benchmarks need and the machine lacks:
# PostgreSQL server binaries (initdb, postgres), psql and pgbench, and with
# --bench also PgBouncer. Fast and silent when everything is present.
set -euo pipefail

want_bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) want_bench=1 ;;
    *) echo "usage: $0 [--bench]" >&2; exit 64 ;;
  esac
done

have_server() {
  if [[ -n "${PG_BIN:-}" && -x "$PG_BIN/initdb" && -x "$PG_BIN/postgres" ]]; then return 0; fi
  if command -v pg_config >/dev/null 2>&1; then
    local d; d="$(pg_config --bindir 2>/dev/null || true)"
    if [[ -x "$d/initdb" && -x "$d/postgres" ]]; then return 0; fi
  fi
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [[ -x "$d/initdb" && -x "$d/postgres" ]]; then return 0; fi
  done
  command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1
}

packages=()
have_server || packages+=(postgresql)
command -v psql >/dev/null 2>&1 || packages+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || packages+=(postgresql-contrib)
command -v setpriv >/dev/null 2>&1 || packages+=(util-linux)
if [[ $want_bench == 1 ]]; then
  command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || packages+=(pgbouncer)
fi

if ((${#packages[@]} > 0)); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "pgtier needs: ${packages[*]}" >&2
    echo "install them with:  sudo apt-get install -y ${packages[*]}" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "pgtier needs PostgreSQL server binaries (initdb, postgres), psql and pgbench; install them and set PG_BIN to their directory" >&2
    exit 1
  fi
  echo "==> installing ${packages[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# Tests run initdb/postgres as the `postgres` OS user when run as root.
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
  echo "==> creating the postgres OS user" >&2
  useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

have_server || { echo "PostgreSQL server binaries still not found after install" >&2; exit 1; }
