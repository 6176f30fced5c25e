#!/usr/bin/env python3
"""Prepared statements through a transaction pooler with asyncpg (used by
tests/transaction_clients.rs).

Usage: tx_prepared_asyncpg.py HOST PORT USER PASSWORD DBNAME CONNS TOTAL
Opens CONNS connections at once and runs TOTAL executions in all, concurrently: each connection
prepares three statements once with conn.prepare() (named __asyncpg_stmt_N__, numbered across
the process; the SQL differs per connection) and fetches them repeatedly; every 25th execution runs inside an explicit transaction. Every result is checked.
Prints "ok executions=<n> backends=<pid,pid,...>" and exits 0 when everything was right; prints
what went wrong and exits 1 otherwise; exits 2 when asyncpg is not installed.
"""
import asyncio
import sys

try:
    import asyncpg
except ImportError as e:
    print(
        f"asyncpg is not installed ({e}): run scripts/test.sh, or "
        "python3 -m pip install 'psycopg[binary]>=3.1' 'asyncpg>=0.29'",
        file=sys.stderr,
    )
    sys.exit(2)


class Mismatch(Exception):
    pass


async def worker(idx, n, args, ready, all_ready, conns):
    host, port, user, password, dbname = args
    off = 100 * (idx + 1)
    conn = await asyncpg.connect(
        host=host,
        port=int(port),
        user=user,
        password=password,
        database=dbname,
        ssl=False,
        timeout=10,
    )
    try:
        ready.append(idx)
        if len(ready) == conns:
            all_ready.set()
        await asyncio.wait_for(all_ready.wait(), 30)
        stmts = [
            (await conn.prepare(f"SELECT $1::int + {off}, pg_backend_pid()"),
             lambda k: k, lambda k: k + off),
            (await conn.prepare(f"SELECT $1::text || '-{off}'"),
             lambda k: str(k), lambda k: f"{k}-{off}"),
            (await conn.prepare(f"SELECT count(*)::int + {off} FROM generate_series(1, $1::int)"),
             lambda k: k, lambda k: k + off),
        ]
        pids = set()
        for j in range(n):
            stmt, param, expect = stmts[j % 3]
            k = j % 7 + 1
            if j % 25 == 24:
                async with conn.transaction():
                    row = await stmt.fetchrow(param(k))
            else:
                row = await stmt.fetchrow(param(k))
            if row[0] != expect(k):
                raise Mismatch(
                    f"connection {idx}, execution {j}: {stmt.get_query()!r} returned "
                    f"{row[0]!r}, expected {expect(k)!r}"
                )
            if j % 3 == 0:
                pids.add(row[1])
        return n, pids
    finally:
        await conn.close()


async def run(args, conns, total):
    ready, all_ready = [], asyncio.Event()
    tasks = [
        worker(idx, total // conns + (1 if idx < total % conns else 0), args, ready, all_ready,
               conns)
        for idx in range(conns)
    ]
    return await asyncio.gather(*tasks)


def main():
    host, port, user, password, dbname, conns, total = sys.argv[1:8]
    conns, total = int(conns), int(total)
    try:
        results = asyncio.run(run((host, port, user, password, dbname), conns, total))
    except asyncpg.PostgresError as e:
        msg = str(e).replace("\n", " ")
        print(f"sqlstate={e.sqlstate} {type(e).__name__}: {msg}")
        return 1
    except Mismatch as e:
        print(e)
        return 1
    except (OSError, asyncio.TimeoutError, asyncpg.InterfaceError) as e:
        print(f"{type(e).__name__}: {e}")
        return 1
    done = sum(r[0] for r in results)
    pids = sorted(set().union(*(r[1] for r in results)))
    print(f"asyncpg={asyncpg.__version__}", file=sys.stderr)
    print(f"ok executions={done} backends={','.join(map(str, pids))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
