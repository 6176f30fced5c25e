#!/usr/bin/env python3
"""Logs in with psycopg 3 and runs SELECT current_user (used by tests/clients.rs).

Usage: psycopg_login.py HOST PORT USER PASSWORD DBNAME
Prints "current_user=<name>" and exits 0 on success; prints "sqlstate=<code> <message>" and
exits 1 when the server refuses (<code> is None for errors during connection: see below); exits 2 when psycopg is not installed.
"""
import sys

try:
    import psycopg
except ImportError as e:
    print(
        f"psycopg is not installed ({e}): run scripts/test.sh, or "
        "python3 -m pip install 'psycopg[binary]>=3.1' 'asyncpg>=0.29'",
        file=sys.stderr,
    )
    sys.exit(2)


def main():
    host, port, user, password, dbname = sys.argv[1:6]
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
        ) as conn:
            row = conn.execute("SELECT current_user").fetchone()
            print(f"current_user={row[0]}")
            print(f"psycopg={psycopg.__version__}", file=sys.stderr)
            return 0
    except psycopg.Error as e:
        # A failed connection has no PGresult, so psycopg's e.sqlstate is None for it (libpq
        # exposes no SQLSTATE for connection failures; checked against PostgreSQL itself). Print
        # it as it is; the caller then checks libpq's message instead.
        msg = str(e).replace("\n", " ")
        print(f"sqlstate={e.sqlstate} {type(e).__name__}: {msg}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
