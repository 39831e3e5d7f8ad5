"""psycopg 3 and psycopg_pool through pgtier: tests/clients.rs's matrix.

Reads the proxy, the CA and two tenants from PGT_* variables (see
tests/clients.rs), runs each check in order and prints `ok <check> ...` as
each one passes; any failure raises, so the exit status is not 0 and the
lines after it are missing. PGT_CHECKS lists the checks that wait on other
work (idle-ping, oversized, do-listen); the others always run.
"""

import os
import select
import threading
import time

import psycopg
from psycopg_pool import ConnectionPool

E = os.environ
CHECKS = set(filter(None, E.get("PGT_CHECKS", "").split(",")))
IDLE_TIMEOUT = float(E["PGT_IDLE_TIMEOUT"])
HINT_53300 = "Close an idle connection"


def conninfo(prefix):
    return psycopg.conninfo.make_conninfo(
        host=E["PGT_HOST"],
        hostaddr=E["PGT_HOSTADDR"],
        port=E["PGT_PORT"],
        dbname=E[f"PGT_{prefix}DB"],
        user=E[f"PGT_{prefix}USER"],
        password=E[f"PGT_{prefix}PASSWORD"],
        sslmode="verify-full",
        sslrootcert=E["PGT_CA"],
        connect_timeout=10,
    )


MAIN = conninfo("")
IDLE = conninfo("IDLE_")


def ok(check, detail=""):
    print(f"ok {check} {detail}".rstrip(), flush=True)


def refused(conn, sql, sqlstate, params=None):
    """Runs sql, which must fail with sqlstate; returns the error."""
    try:
        conn.execute(sql, params)
    except psycopg.Error as e:
        assert e.sqlstate == sqlstate, f"{sql[:60]}: {e.sqlstate} {e}"
        return e
    raise AssertionError(f"{sql[:60]} was not refused")


def pid(conn):
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def main():
    with psycopg.connect(MAIN, autocommit=True) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT 1").fetchone() == (1,)
    ok("connect", "verify-full")

    # A hog holds one slot, the pool takes the other; a third connection
    # is refused. libpq reports a refused login by its text only (no
    # SQLSTATE for errors before the connection is up): message and hint.
    hog = psycopg.connect(MAIN, autocommit=True)
    pool = ConnectionPool(
        MAIN,
        min_size=1,
        max_size=2,
        kwargs={"autocommit": True},
        check=ConnectionPool.check_connection,
        reconnect_timeout=30,
        open=True,
    )
    pool.wait(timeout=10)
    first = pool.getconn(timeout=10)
    try:
        psycopg.connect(MAIN)
        raise AssertionError("a third connection got in")
    except psycopg.OperationalError as e:
        text = str(e)
        assert 'too many connections for database "' in text, text
        assert HINT_53300 in text, text
    ok("53300", "message and hint")
    # The pool grows into the slot the hog frees.
    hog.close()
    second = pool.getconn(timeout=20)
    assert pid(second) != pid(first)
    pool.putconn(second)
    ok("53300-recovered")

    c = first
    e = refused(c, "INSERT INTO t VALUES (0)", "53400")
    assert e.diag.message_hint, "53400 has a hint"
    refused(c, "INSERT INTO t VALUES (%s)", "53400", (0,))
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] > 0
    ok("53400", "simple and extended; connection kept")

    e = refused(c, "CREATE EXTENSION pgcrypto", "42501")
    assert e.diag.message_hint, "42501 has a hint"
    assert c.execute("SELECT 1").fetchone() == (1,)
    ok("42501", "connection kept")

    timer = threading.Timer(0.5, c.cancel_safe)
    started = time.monotonic()
    timer.start()
    refused(c, "SELECT pg_sleep(30)", "57014")
    assert time.monotonic() - started < 10
    assert c.execute("SELECT 1").fetchone() == (1,)
    ok("cancel", "cancel_safe")

    if "do-listen" in CHECKS:
        with pool.connection(timeout=10) as other:
            c.execute("DO $$BEGIN LISTEN pgt_chan; END$$")
            other.execute("NOTIFY pgt_chan, 'psycopg'")
            got = [n.payload for n in c.notifies(timeout=5, stop_after=1)]
            assert got == ["psycopg"], got
            c.execute("UNLISTEN *")
        ok("do-listen")
    pool.putconn(c)

    if "oversized" in CHECKS:
        with pool.connection(timeout=10) as c:
            big = "SELECT '" + "x" * (9 << 20) + "'"
            try:
                c.execute(big)
                raise AssertionError("a 9 MiB statement ran")
            except psycopg.Error as e:
                assert e.sqlstate == "54000", f"{e.sqlstate} {e}"
        with pool.connection(timeout=10) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        ok("oversized", "54000 heard; pool reconnected")
    pool.close()

    # The idle tenant: the pool's connection idles past the timeout, the
    # proxy closes it, the pool's check sees it dead and reconnects.
    idle = ConnectionPool(
        IDLE,
        min_size=1,
        max_size=1,
        kwargs={"autocommit": True},
        check=ConnectionPool.check_connection,
        open=True,
    )
    idle.wait(timeout=10)
    c = idle.getconn(timeout=10)
    before = pid(c)
    started = time.monotonic()
    readable, _, _ = select.select([c.fileno()], [], [], IDLE_TIMEOUT + 5)
    waited = time.monotonic() - started
    assert readable, "the proxy said nothing within the idle timeout"
    assert waited > IDLE_TIMEOUT - 0.5, f"closed after {waited:.1f} s"
    try:
        c.execute("SELECT 1")
        raise AssertionError("the idle connection still works")
    except psycopg.OperationalError as e:
        assert e.sqlstate == "57P05" or "idle-session timeout" in str(e), f"{e.sqlstate} {e}"
    idle.putconn(c)
    with idle.connection(timeout=10) as c:
        assert pid(c) != before
    ok("idle", f"57P05 after {waited:.1f} s; pool reconnected")

    if "idle-ping" in CHECKS:
        # psycopg_pool's own check (an empty statement) every 200 ms is
        # not work: the connection is still closed as idle.
        c = idle.getconn(timeout=10)
        before = pid(c)
        started = time.monotonic()
        try:
            while time.monotonic() - started < IDLE_TIMEOUT + 5:
                ConnectionPool.check_connection(c)
                time.sleep(0.2)
            raise AssertionError("pings kept the connection open")
        except psycopg.OperationalError as e:
            waited = time.monotonic() - started
            assert e.sqlstate == "57P05" or "idle-session timeout" in str(e), f"{e.sqlstate} {e}"
        assert waited > IDLE_TIMEOUT - 0.5, f"closed after {waited:.1f} s"
        idle.putconn(c)
        with idle.connection(timeout=10) as c:
            assert pid(c) != before
        ok("idle-ping", f"57P05 after {waited:.1f} s of empty statements; pool reconnected")
    idle.close()


if __name__ == "__main__":
    main()
