"""Cancels a running query with libpq's cancel API of PostgreSQL 17+
(PQcancelCreate + PQcancelBlocking), which psql does not use (its Ctrl-C
still calls the old, signal-safe PQcancel) and no Rust client offers.
The new API opens the cancel connection with the session's own
settings: TLS as negotiated (SSLRequest or, with sslnegotiation=direct,
direct TLS) and certificate checks, so it is what tells whether a proxy
accepts encrypted cancel requests.

Usage: python3 libpq_cancel.py LIBPQ_PATH CONNINFO

Driven by tests/matrix.rs over stdin/stdout, one line each way:
  -> "libpq <PQlibVersion>"        after loading the library
  -> "running <backend pid>"       once `select pg_sleep(30)` is sent
  <- any line                      the caller saw the query run: cancel it
  -> "cancel sent"                 PQcancelBlocking succeeded, or
  -> "cancel failed: <message>"    it reported an error
  -> "query ended <SQLSTATE>"      the query's outcome (57014 = cancelled)
Other errors go to stderr with exit status 1.
"""

import ctypes
import sys


def main() -> int:
    libpq_path, conninfo = sys.argv[1], sys.argv[2]
    pq = ctypes.CDLL(libpq_path)
    pq.PQlibVersion.restype = ctypes.c_int
    pq.PQconnectdb.argtypes = [ctypes.c_char_p]
    pq.PQconnectdb.restype = ctypes.c_void_p
    pq.PQstatus.argtypes = [ctypes.c_void_p]
    pq.PQerrorMessage.argtypes = [ctypes.c_void_p]
    pq.PQerrorMessage.restype = ctypes.c_char_p
    pq.PQbackendPID.argtypes = [ctypes.c_void_p]
    pq.PQsendQuery.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    pq.PQgetResult.argtypes = [ctypes.c_void_p]
    pq.PQgetResult.restype = ctypes.c_void_p
    pq.PQresultErrorField.argtypes = [ctypes.c_void_p, ctypes.c_int]
    pq.PQresultErrorField.restype = ctypes.c_char_p
    pq.PQclear.argtypes = [ctypes.c_void_p]
    pq.PQfinish.argtypes = [ctypes.c_void_p]
    # The cancel API of libpq 17+: absent symbols fail right here.
    pq.PQcancelCreate.argtypes = [ctypes.c_void_p]
    pq.PQcancelCreate.restype = ctypes.c_void_p
    pq.PQcancelBlocking.argtypes = [ctypes.c_void_p]
    pq.PQcancelErrorMessage.argtypes = [ctypes.c_void_p]
    pq.PQcancelErrorMessage.restype = ctypes.c_char_p
    pq.PQcancelFinish.argtypes = [ctypes.c_void_p]

    print(f"libpq {pq.PQlibVersion()}", flush=True)
    conn = pq.PQconnectdb(conninfo.encode())
    if pq.PQstatus(conn) != 0:  # CONNECTION_OK
        print(f"connect: {pq.PQerrorMessage(conn).decode().strip()}", file=sys.stderr)
        return 1
    if not pq.PQsendQuery(conn, b"select pg_sleep(30)"):
        print(f"send: {pq.PQerrorMessage(conn).decode().strip()}", file=sys.stderr)
        return 1
    print(f"running {pq.PQbackendPID(conn)}", flush=True)
    sys.stdin.readline()

    cancel = pq.PQcancelCreate(conn)
    if not cancel:
        print("PQcancelCreate: out of memory", file=sys.stderr)
        return 1
    # A failure is reported, not fatal: whether the query was cancelled
    # anyway is the caller's next question.
    if pq.PQcancelBlocking(cancel):
        print("cancel sent", flush=True)
    else:
        message = pq.PQcancelErrorMessage(cancel).decode().strip()
        print(f"cancel failed: {message}", flush=True)
    pq.PQcancelFinish(cancel)

    sqlstate = None
    while True:
        result = pq.PQgetResult(conn)
        if not result:
            break
        field = pq.PQresultErrorField(result, ord("C"))  # PG_DIAG_SQLSTATE
        if field:
            sqlstate = field.decode()
        pq.PQclear(result)
    print(f"query ended {sqlstate or 'without error'}", flush=True)
    pq.PQfinish(conn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
