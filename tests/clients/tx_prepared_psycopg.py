#!/usr/bin/env python3
"""Prepared statements through a transaction pooler with psycopg 3 (used by
tests/transaction_clients.rs).

Usage: tx_prepared_psycopg.py HOST PORT USER PASSWORD DBNAME CONNS TOTAL
Opens CONNS connections (autocommit) at once, one thread each, and runs TOTAL executions in all of
three statements per connection with prepare=True (psycopg names them _pg3_0, _pg3_1, ... in
every connection, while the SQL differs per connection); every 25th execution runs inside an
explicit transaction. Every result is checked.
Prints "ok executions=<n> backends=<pid,pid,...>" and exits 0 when everything was right; prints
what went wrong and exits 1 otherwise; exits 2 when psycopg is not installed.
"""
import sys
import threading

try:
    import psycopg
except ImportError as e:
    print(
        f"psycopg is not installed ({e}): run scripts/test.sh, or "
        "python3 -m pip install 'psycopg[binary]>=3.1' 'asyncpg>=0.29'",
        file=sys.stderr,
    )
    sys.exit(2)


def statements(idx):
    """(sql, parameter for execution j, expected first column) for connection idx."""
    off = 100 * (idx + 1)
    return [
        (f"SELECT %s::int + {off}, pg_backend_pid()", lambda k: k, lambda k: k + off),
        (f"SELECT %s::text || '-{off}'", lambda k: str(k), lambda k: f"{k}-{off}"),
        (
            f"SELECT count(*)::int + {off} FROM generate_series(1, %s::int)",
            lambda k: k,
            lambda k: k + off,
        ),
    ]


def worker(idx, n, args, barrier, out):
    host, port, user, password, dbname = args
    stmts = statements(idx)
    pids = set()
    done = 0
    try:
        with psycopg.connect(
            host=host,
            port=int(port),
            user=user,
            password=password,
            dbname=dbname,
            sslmode="disable",
            gssencmode="disable",
            connect_timeout=10,
            autocommit=True,
        ) as conn:
            barrier.wait()
            for j in range(n):
                sql, param, expect = stmts[j % 3]
                k = j % 7 + 1

                def run():
                    return conn.execute(sql, (param(k),), prepare=True).fetchone()

                if j % 25 == 24:
                    with conn.transaction():
                        row = run()
                else:
                    row = run()
                if row[0] != expect(k):
                    out[idx] = (done, pids, f"connection {idx}, execution {j}: {sql!r} "
                                f"returned {row[0]!r}, expected {expect(k)!r}")
                    return
                if j % 3 == 0:
                    pids.add(row[1])
                done += 1
    except threading.BrokenBarrierError:
        out[idx] = (done, pids, f"connection {idx}: the others did not connect")
        return
    except psycopg.Error as e:
        barrier.abort()
        msg = str(e).replace("\n", " ")
        out[idx] = (done, pids, f"connection {idx}: sqlstate={e.sqlstate} "
                    f"{type(e).__name__}: {msg}")
        return
    except Exception as e:  # noqa: BLE001 - any other failure is reported, not lost
        barrier.abort()
        out[idx] = (done, pids, f"connection {idx}: {type(e).__name__}: {e}")
        return
    out[idx] = (done, pids, None)


def main():
    host, port, user, password, dbname, conns, total = sys.argv[1:8]
    conns, total = int(conns), int(total)
    barrier = threading.Barrier(conns, timeout=30)
    out = [None] * conns
    threads = []
    for idx in range(conns):
        n = total // conns + (1 if idx < total % conns else 0)
        t = threading.Thread(
            target=worker, args=(idx, n, (host, port, user, password, dbname), barrier, out)
        )
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    errors = [
        f"connection {i}: no result" if o is None else o[2]
        for i, o in enumerate(out)
        if o is None or o[2] is not None
    ]
    if errors:
        for e in errors:
            print(e)
        return 1
    done = sum(o[0] for o in out)
    pids = sorted(set().union(*(o[1] for o in out)))
    print(f"psycopg={psycopg.__version__}", file=sys.stderr)
    print(f"ok executions={done} backends={','.join(map(str, pids))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
