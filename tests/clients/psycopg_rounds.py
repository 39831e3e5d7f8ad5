"""Drives pgtier with psycopg 3's pure-Python implementation, a client that
waits on its socket itself (not in libpq's own wait, which checks
SSL_pending).

Each round connects, runs COPY ... TO STDOUT several times with sizes that
vary from round to round (so that TLS record boundaries fall at many
different places in libpq's input buffer), fetches a large result, and
closes. A round that takes longer than ROUND_DEADLINE is a hang: SIGALRM
reports the round and ends the process at once (exit 3), without waiting
for anything else on the stuck connection.

usage: psycopg_rounds.py DSN ROUNDS
The table t must exist with at least 1,000 rows.
Prints "ok ROUNDS copies=N bytes=M select_rows=R" on success.
"""
import os
import signal
import sys

os.environ.setdefault("PSYCOPG_IMPL", "python")
import psycopg  # noqa: E402

ROUND_DEADLINE = 20
COPIES_PER_ROUND = 6
current_round = 0


def on_alarm(signum, frame):
    print(f"hung in round {current_round}", file=sys.stderr, flush=True)
    os._exit(3)


def main():
    global current_round
    dsn, rounds = sys.argv[1], int(sys.argv[2])
    if psycopg.pq.__impl__ != "python":
        print(f"psycopg implementation is {psycopg.pq.__impl__}, not python", file=sys.stderr)
        sys.exit(2)
    signal.signal(signal.SIGALRM, on_alarm)
    copies = copied = select_rows = 0
    for r in range(rounds):
        current_round = r
        signal.alarm(ROUND_DEADLINE)
        with psycopg.connect(dsn) as conn:
            for j in range(COPIES_PER_ROUND):
                limit = 20 + (r * 53 + j * 37) % 980
                got = 0
                with conn.cursor().copy(f"COPY (SELECT * FROM t ORDER BY g LIMIT {limit}) TO STDOUT") as copy:
                    for data in copy:
                        got += len(data)
                if got == 0:
                    print(f"round {r}: COPY of {limit} rows returned nothing", file=sys.stderr)
                    sys.exit(4)
                copies += 1
                copied += got
            rows = conn.execute("SELECT g, s FROM t, generate_series(1, 3) AS k").fetchall()
            if r == 0:
                select_rows = len(rows)
            elif len(rows) != select_rows:
                print(f"round {r}: {len(rows)} rows, round 0 had {select_rows}", file=sys.stderr)
                sys.exit(4)
        signal.alarm(0)
    print(f"ok {rounds} copies={copies} bytes={copied} select_rows={select_rows}")


if __name__ == "__main__":
    main()
