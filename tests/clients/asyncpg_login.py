#!/usr/bin/env python3
"""Logs in with asyncpg and runs SELECT current_user (used by tests/clients.rs).

Usage: asyncpg_login.py HOST PORT USER PASSWORD DBNAME
Prints "current_user=<name>" and exits 0 on success; prints "sqlstate=<code> <message>" and
exits 1 when the server refuses; exits 2 when asyncpg is not installed.
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


async def login(host, port, user, password, dbname):
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
        return await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()


def main():
    host, port, user, password, dbname = sys.argv[1:6]
    try:
        name = asyncio.run(login(host, port, user, password, dbname))
    except asyncpg.PostgresError as e:
        msg = str(e).replace("\n", " ")
        print(f"sqlstate={e.sqlstate} {type(e).__name__}: {msg}")
        return 1
    print(f"current_user={name}")
    print(f"asyncpg={asyncpg.__version__}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
