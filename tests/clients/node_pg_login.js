#!/usr/bin/env node
// Logs in with node-postgres and runs SELECT current_user (used by tests/clients.rs).
//
// Usage: node node_pg_login.js HOST PORT USER PASSWORD DBNAME
// Prints "current_user=<name>" and exits 0 on success; prints "sqlstate=<code> <message>" and
// exits 1 when the server refuses; exits 2 when pg is not installed (tests/clients/node_modules).
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

async function main() {
  const [host, port, user, password, database] = process.argv.slice(2, 7);
  const client = new pg.Client({
    host,
    port: Number(port),
    user,
    password,
    database,
    ssl: false,
    connectionTimeoutMillis: 10000,
  });
  try {
    await client.connect();
    const res = await client.query('SELECT current_user AS u');
    console.log(`current_user=${res.rows[0].u}`);
    await client.end();
    return 0;
  } catch (err) {
    const msg = String(err.message).replace(/\n/g, ' ');
    console.log(`sqlstate=${err.code} ${err.name}: ${msg}`);
    try {
      await client.end();
    } catch (_) {
      // already closed
    }
    return 1;
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(3);
  }
);
