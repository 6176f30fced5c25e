#!/usr/bin/env node
// Prepared statements through a transaction pooler with node-postgres named queries (used by
// tests/transaction_clients.rs).
//
// Usage: node tx_prepared_node.js HOST PORT USER PASSWORD DBNAME CONNS TOTAL
// Opens CONNS connections at once and runs TOTAL executions in all, concurrently: each
// connection runs the named queries q1, q2, q3 ({name, text, values}: parsed once per
// connection, then Bind/Execute only), whose SQL differs per connection under the same names;
// every 25th execution runs inside an explicit transaction. Every result is checked.
// Prints "ok executions=<n> backends=<pid,pid,...>" and exits 0 when everything was right;
// prints what went wrong and exits 1 otherwise; exits 2 when pg is not installed.
'use strict';

let pg;
try {
  pg = require('pg');
} catch (e) {
  console.error(
    `node-postgres (pg) is not installed (${e.message.split('\n')[0]}): run scripts/test.sh, or ` +
      'npm install --no-audit --no-fund --prefix tests/clients'
  );
  process.exit(2);
}

function statements(idx) {
  const off = 100 * (idx + 1);
  return [
    {
      name: 'q1',
      text: `SELECT $1::int + ${off} AS v, pg_backend_pid() AS pid`,
      param: (k) => k,
      expect: (k) => k + off,
    },
    {
      name: 'q2',
      text: `SELECT $1::text || '-${off}' AS v`,
      param: (k) => String(k),
      expect: (k) => `${k}-${off}`,
    },
    {
      name: 'q3',
      text: `SELECT count(*)::int + ${off} AS v FROM generate_series(1, $1::int)`,
      param: (k) => k,
      expect: (k) => k + off,
    },
  ];
}

async function work(client, idx, n) {
  const stmts = statements(idx);
  const pids = new Set();
  for (let j = 0; j < n; j++) {
    const s = stmts[j % 3];
    const k = (j % 7) + 1;
    const q = { name: s.name, text: s.text, values: [s.param(k)] };
    let res;
    if (j % 25 === 24) {
      await client.query('BEGIN');
      res = await client.query(q);
      await client.query('COMMIT');
    } else {
      res = await client.query(q);
    }
    const v = res.rows[0].v;
    if (v !== s.expect(k)) {
      throw new Error(
        `connection ${idx}, execution ${j}: ${s.name} (${s.text}) returned ${JSON.stringify(v)}, ` +
          `expected ${JSON.stringify(s.expect(k))}`
      );
    }
    if (j % 3 === 0) pids.add(res.rows[0].pid);
  }
  return { n, pids };
}

async function main() {
  const [host, port, user, password, database, connsArg, totalArg] = process.argv.slice(2, 9);
  const conns = Number(connsArg);
  const total = Number(totalArg);
  const clients = [];
  for (let i = 0; i < conns; i++) {
    const c = new pg.Client({
      host,
      port: Number(port),
      user,
      password,
      database,
      ssl: false,
      connectionTimeoutMillis: 10000,
    });
    c.on('error', () => {}); // reported by the failing query instead
    clients.push(c);
  }
  try {
    await Promise.all(clients.map((c) => c.connect()));
    const results = await Promise.all(
      clients.map((c, idx) =>
        work(c, idx, Math.floor(total / conns) + (idx < total % conns ? 1 : 0))
      )
    );
    const done = results.reduce((a, r) => a + r.n, 0);
    const pids = new Set();
    for (const r of results) for (const p of r.pids) pids.add(p);
    console.log(`ok executions=${done} backends=${[...pids].sort((a, b) => a - b).join(',')}`);
    return 0;
  } catch (err) {
    const msg = String(err.message).replace(/\n/g, ' ');
    console.log(`sqlstate=${err.code} ${err.name}: ${msg}`);
    return 1;
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(3);
  }
);
