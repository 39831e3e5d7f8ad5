"""asyncpg (its own protocol implementation, no libpq) through pgtier:
tests/clients.rs's matrix. Same environment and output as
psycopg_matrix.py: one `ok <check> ...` line per passed check, a non-zero
exit at the first failure.
"""

import asyncio
import os
import ssl
import time

import asyncpg

E = os.environ
CHECKS = set(filter(None, E.get("PGT_CHECKS", "").split(",")))
IDLE_TIMEOUT = float(E["PGT_IDLE_TIMEOUT"])
HINT_53300 = "Close an idle connection"

# Verification against the test CA: chain and the name `localhost`.
TLS = ssl.create_default_context(cafile=E["PGT_CA"])
assert TLS.check_hostname and TLS.verify_mode == ssl.CERT_REQUIRED


def params(prefix):
    return dict(
        host=E["PGT_HOST"],
        port=int(E["PGT_PORT"]),
        database=E[f"PGT_{prefix}DB"],
        user=E[f"PGT_{prefix}USER"],
        password=E[f"PGT_{prefix}PASSWORD"],
        ssl=TLS,
        timeout=10,
    )


MAIN = params("")
IDLE = params("IDLE_")


def ok(check, detail=""):
    print(f"ok {check} {detail}".rstrip(), flush=True)


async def refused(awaitable, sqlstate):
    try:
        await awaitable
    except asyncpg.PostgresError as e:
        assert e.sqlstate == sqlstate, f"{e.sqlstate} {e}"
        return e
    raise AssertionError(f"not refused (expected {sqlstate})")


def gone(c):
    """Whether pool connection c is closed. asyncpg's pool detaches a
    connection the server closed (which then says it was released)."""
    try:
        return c.is_closed()
    except asyncpg.InterfaceError as e:
        assert "released back to the pool" in str(e), e
        return True


async def main():
    c = await asyncpg.connect(**MAIN)
    assert c.get_server_version().major >= 15
    assert await c.fetchval("SELECT 1") == 1
    await c.close()
    ok("connect", "ssl context with the test CA")

    # A hog holds one slot; the pool's first connection takes the other
    # and its second is refused with the code and hint, as the app sees it.
    hog = await asyncpg.connect(**MAIN)
    pool = await asyncpg.create_pool(min_size=1, max_size=2, **MAIN)
    first = await pool.acquire()
    e = await refused(pool.acquire(timeout=10), "53300")
    assert isinstance(e, asyncpg.TooManyConnectionsError), type(e)
    assert HINT_53300 in (e.hint or ""), e.hint
    ok("53300", "TooManyConnectionsError with hint")
    await hog.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            second = await pool.acquire(timeout=10)
            break
        except asyncpg.TooManyConnectionsError:
            # The hog's slot is released as its session ends.
            assert time.monotonic() < deadline, "the pool never got the freed slot"
            await asyncio.sleep(0.1)
    assert await second.fetchval("SELECT pg_backend_pid()") != await first.fetchval(
        "SELECT pg_backend_pid()"
    )
    await pool.release(second)
    ok("53300-recovered")

    c = first
    e = await refused(c.execute("INSERT INTO t VALUES (0)"), "53400")
    assert e.hint, "53400 has a hint"
    await refused(c.fetchval("INSERT INTO t VALUES ($1) RETURNING n", 0), "53400")
    assert await c.fetchval("SELECT count(*) FROM t") > 0
    ok("53400", "simple and prepared; connection kept")

    e = await refused(c.execute("CREATE EXTENSION pgcrypto"), "42501")
    assert isinstance(e, asyncpg.InsufficientPrivilegeError), type(e)
    assert e.hint, "42501 has a hint"
    assert await c.fetchval("SELECT 1") == 1
    ok("42501", "connection kept")

    # asyncpg's cancel: a timeout sends a CancelRequest and waits for the
    # statement to end (57014, which it swallows), so the next statement
    # running at once shows the sleep was cancelled.
    started = time.monotonic()
    try:
        await c.fetch("SELECT pg_sleep(30)", timeout=0.5)
        raise AssertionError("pg_sleep(30) finished within 0.5 s")
    except asyncio.TimeoutError:
        pass
    assert await c.fetchval("SELECT 1") == 1
    took = time.monotonic() - started
    assert took < 10, f"the sleep was not cancelled ({took:.1f} s)"
    # And a task cancelled by its caller does the same.
    task = asyncio.ensure_future(c.fetch("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.5)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert await c.fetchval("SELECT 1") == 1
    assert time.monotonic() - started < 20
    ok("cancel", f"timeout and task cancel; next statement after {took:.1f} s")

    if "do-listen" in CHECKS:
        got = asyncio.get_running_loop().create_future()
        await c.add_listener("pgt_chan", lambda *args: got.done() or got.set_result(args[3]))
        # add_listener LISTENs itself; undo that so that only the DO's
        # LISTEN can deliver.
        await c.execute("UNLISTEN pgt_chan")
        await c.execute("DO $$BEGIN LISTEN pgt_chan; END$$")
        async with pool.acquire() as other:
            await other.execute("NOTIFY pgt_chan, 'asyncpg'")
        assert await asyncio.wait_for(got, 5) == "asyncpg"
        await c.execute("UNLISTEN *")
        ok("do-listen")
    await pool.release(c)

    if "oversized" in CHECKS:
        async with pool.acquire() as c:
            # A FATAL during a query reaches asyncpg as the connection's
            # loss (08003) caused by the server's error, as for PostgreSQL's
            # own FATALs mid-query: the cause must be the proxy's 54000.
            try:
                await c.execute("SELECT '" + "x" * (9 << 20) + "'")
                raise AssertionError("a 9 MiB statement was not refused")
            except asyncpg.PostgresError as e:
                heard = e if e.sqlstate == "54000" else e.__cause__
                assert getattr(heard, "sqlstate", None) == "54000", f"{e.sqlstate} {e}"
        async with pool.acquire() as c:
            assert await c.fetchval("SELECT 1") == 1
        ok("oversized", "54000 heard; pool reconnected")
    await pool.close()

    # The idle tenant: asyncpg reads its socket in the background, so it
    # notices the proxy's close by itself; the pool reconnects on acquire.
    idle = await asyncpg.create_pool(min_size=1, max_size=1, **IDLE)
    c = await idle.acquire()
    before = await c.fetchval("SELECT pg_backend_pid()")
    started = time.monotonic()
    while not gone(c):
        assert time.monotonic() - started < IDLE_TIMEOUT + 5, "still open"
        await asyncio.sleep(0.05)
    waited = time.monotonic() - started
    assert waited > IDLE_TIMEOUT - 0.5, f"closed after {waited:.1f} s"
    async with idle.acquire() as c:
        assert await c.fetchval("SELECT pg_backend_pid()") != before
    ok("idle", f"closed after {waited:.1f} s; pool reconnected")

    await idle.close()


if __name__ == "__main__":
    asyncio.run(main())
