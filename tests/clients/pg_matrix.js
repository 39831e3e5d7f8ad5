// node-postgres (`pg`, its own protocol code) through pgtier:
// tests/clients.rs's matrix. Same environment and output as
// psycopg_matrix.py: one `ok <check> ...` line per passed check, a
// non-zero exit at the first failure. `pg` is found through NODE_PATH
// (.deps/node/node_modules, installed by scripts/ensure-deps.sh).
'use strict'

const fs = require('fs')
const assert = require('assert')
const pg = require('pg')

const E = process.env
const CHECKS = new Set((E.PGT_CHECKS || '').split(',').filter(Boolean))
const IDLE_TIMEOUT = Number(E.PGT_IDLE_TIMEOUT) * 1000
const HINT_53300 = 'Close an idle connection'

function config(prefix) {
  return {
    // The address, and the name the certificate must carry.
    host: E.PGT_HOSTADDR,
    port: Number(E.PGT_PORT),
    database: E[`PGT_${prefix}DB`],
    user: E[`PGT_${prefix}USER`],
    password: E[`PGT_${prefix}PASSWORD`],
    ssl: { ca: fs.readFileSync(E.PGT_CA), servername: E.PGT_HOST, rejectUnauthorized: true },
    connectionTimeoutMillis: 10000,
  }
}
const MAIN = config('')
const IDLE = config('IDLE_')

function ok(check, detail = '') {
  console.log(`ok ${check} ${detail}`.trimEnd())
}

async function refused(promise, code) {
  try {
    await promise
  } catch (e) {
    assert.strictEqual(e.code, code, `${e.code} ${e.message}`)
    return e
  }
  throw new Error(`not refused (expected ${code})`)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const pid = async (c) => (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid

async function main() {
  {
    const c = new pg.Client(MAIN)
    await c.connect()
    assert.strictEqual((await c.query('SELECT 1 AS one')).rows[0].one, 1)
    await c.end()
    ok('connect', 'ssl.ca with the test CA, servername checked')
  }

  // A hog holds one slot; the pool's first client takes the other and its
  // second is refused with the code and hint.
  const hog = new pg.Client(MAIN)
  await hog.connect()
  const pool = new pg.Pool({ ...MAIN, max: 2 })
  pool.on('error', () => {}) // idle clients' errors: the checks below look
  const first = await pool.connect()
  const e = await refused(pool.connect(), '53300')
  assert.ok((e.hint || '').includes(HINT_53300), e.hint)
  ok('53300', 'code and hint')
  await hog.end()
  let second
  for (const deadline = Date.now() + 10000; ; ) {
    try {
      second = await pool.connect()
      break
    } catch (e) {
      // The hog's slot is released as its session ends.
      assert.strictEqual(e.code, '53300', e.message)
      assert.ok(Date.now() < deadline, 'the pool never got the freed slot')
      await sleep(100)
    }
  }
  assert.notStrictEqual(await pid(second), await pid(first))
  second.release()
  ok('53300-recovered')

  const c = first
  const e53400 = await refused(c.query('INSERT INTO t VALUES (0)'), '53400')
  assert.ok(e53400.hint, '53400 has a hint')
  await refused(c.query('INSERT INTO t VALUES ($1)', [0]), '53400')
  assert.ok(Number((await c.query('SELECT count(*) AS n FROM t')).rows[0].n) > 0)
  ok('53400', 'simple and extended; connection kept')

  const e42501 = await refused(c.query('CREATE EXTENSION pgcrypto'), '42501')
  assert.ok(e42501.hint, '42501 has a hint')
  assert.strictEqual((await c.query('SELECT 1 AS one')).rows[0].one, 1)
  ok('42501', 'connection kept')

  // node-postgres cancels with a second Client's cancel(client, query): a
  // new connection carrying the first one's key (a plaintext
  // CancelRequest).
  {
    const started = Date.now()
    const query = new pg.Query('SELECT pg_sleep(30)')
    const sleeping = new Promise((resolve, reject) => {
      query.on('end', resolve)
      query.on('error', reject)
    })
    c.query(query)
    await sleep(500)
    new pg.Client(MAIN).cancel(c, query)
    await refused(sleeping, '57014')
    assert.ok(Date.now() - started < 10000)
    assert.strictEqual((await c.query('SELECT 1 AS one')).rows[0].one, 1)
    ok('cancel', 'Client.cancel')
  }

  if (CHECKS.has('do-listen')) {
    const other = await pool.connect()
    const got = new Promise((resolve) => c.once('notification', (n) => resolve(n.payload)))
    await c.query('DO $$BEGIN LISTEN pgt_chan; END$$')
    await other.query("NOTIFY pgt_chan, 'node'")
    other.release()
    const payload = await Promise.race([got, sleep(5000).then(() => 'no notification in 5 s')])
    assert.strictEqual(payload, 'node')
    await c.query('UNLISTEN *')
    ok('do-listen')
  }
  c.release()

  if (CHECKS.has('oversized')) {
    const big = await pool.connect()
    await refused(big.query("SELECT '" + 'x'.repeat(9 << 20) + "'"), '54000')
    big.release(true)
    assert.strictEqual((await pool.query('SELECT 1 AS one')).rows[0].one, 1)
    ok('oversized', '54000 heard; pool reconnected')
  }
  await pool.end()

  // The idle tenant: the pool hears the idle client's 57P05 as an 'error'
  // event, drops it, and the next query opens a new connection.
  const idle = new pg.Pool({ ...IDLE, max: 1 })
  {
    const c = await idle.connect()
    const before = await pid(c)
    const heard = new Promise((resolve) => idle.once('error', resolve))
    c.release()
    const started = Date.now()
    const err = await Promise.race([heard, sleep(IDLE_TIMEOUT + 5000).then(() => null)])
    const waited = (Date.now() - started) / 1000
    assert.ok(err, 'the idle client was not closed')
    assert.strictEqual(err.code, '57P05', err.message)
    assert.ok(waited > IDLE_TIMEOUT / 1000 - 0.5, `closed after ${waited} s`)
    const after = await idle.connect()
    assert.notStrictEqual(await pid(after), before)
    after.release()
    ok('idle', `57P05 after ${waited.toFixed(1)} s; pool reconnected`)
  }

  if (CHECKS.has('idle-ping')) {
    // An empty statement (`;`) every 200 ms is not work.
    idle.on('error', () => {})
    const c = await idle.connect()
    c.on('error', () => {})
    const before = await pid(c)
    const started = Date.now()
    let err = null
    while (!err && Date.now() - started < IDLE_TIMEOUT + 5000) {
      try {
        await c.query(';')
        await sleep(200)
      } catch (e) {
        err = e
      }
    }
    const waited = (Date.now() - started) / 1000
    assert.ok(err, 'pings kept the connection open')
    assert.ok(waited > IDLE_TIMEOUT / 1000 - 0.5, `closed after ${waited} s`)
    c.release(err)
    const after = await idle.connect()
    assert.notStrictEqual(await pid(after), before)
    after.release()
    ok('idle-ping', `closed after ${waited.toFixed(1)} s of ';'; pool reconnected`)
  }
  await idle.end()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
