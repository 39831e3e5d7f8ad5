//! Integrity under churn: 8 free-tier tenants × 2 sessions run mixed
//! INSERT (extended protocol), UPDATE and COPY FROM STDIN transactions
//! through the proxy while sessions are killed at random points (between
//! statements, mid-COPY, with the COMMIT in flight). Afterwards, read
//! straight from the cluster: every committed row is there with the bytes
//! that were sent (checked against the client's own checksum and its copy
//! of the row), no row of a transaction that did not commit is, a
//! transaction whose COMMIT was cut off is there whole or not at all, and
//! every slot (proxy and cluster) is free.
//!
//! `cargo test --test it integrity::` runs 10 s; the 60 s version is
//! `cargo test --test it integrity:: -- --ignored`.

use crate::common;
use crate::harden;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{connect, wait_until};
use futures_util::SinkExt;
use harden::Rng;
use tokio_postgres::error::SqlState;

const TENANTS: usize = 8;
const SESSIONS_PER_TENANT: usize = 2;

/// FNV-1a, 64 bits: the client's checksum of what it sent (as `i64`,
/// PostgreSQL's `bigint`).
fn checksum(bytes: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// A payload of printable bytes (COPY's text format needs no escaping),
/// mostly short, sometimes long enough to straddle the proxy's reads.
fn payload(rng: &mut Rng) -> String {
    let len = match rng.below(10) {
        0 => 8_000 + rng.below(60_000),
        1..=3 => 300 + rng.below(3_000),
        _ => 1 + rng.below(200),
    } as usize;
    (0..len)
        .map(|_| (b'!' + rng.below(94) as u8) as char)
        .filter(|c| *c != '\\')
        .collect()
}

/// What a transaction did, for the check afterwards.
#[derive(Debug, Default)]
struct Txn {
    id: i64,
    /// Rows inserted (INSERT or COPY): id → payload.
    inserted: BTreeMap<i64, String>,
    /// Rows of earlier committed transactions rewritten: id → payload.
    updated: BTreeMap<i64, String>,
}

/// How a transaction ended, as far as the client can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Committed,
    /// Killed (or failed) before COMMIT was sent: cannot have committed.
    Aborted,
    /// Killed with the COMMIT in flight: committed or not, but whole.
    Unknown,
}

/// Where a worker kills its own session in a transaction, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    No,
    BetweenStatements,
    MidCopy,
    DuringCommit,
}

type Conn = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

/// One session's worker: transactions until `until`, reconnecting after
/// every kill. Returns its transactions with their fates, and how many
/// logins had to wait for a killed session's slot.
async fn worker(
    addr: std::net::SocketAddr,
    tenant: common::Tenant,
    worker: i64,
    seed: u64,
    until: Instant,
) -> (Vec<(Txn, Fate)>, usize) {
    let mut rng = Rng::new(seed);
    let mut log = Vec::new();
    let mut waited = 0;
    // Row ids committed by this worker (the only rows it rewrites, so its
    // transactions' order alone decides each row's final value).
    let mut mine: Vec<i64> = Vec::new();
    let mut next_row = worker << 40;
    let mut next_txn = worker << 40;
    let mut session: Option<(tokio_postgres::Client, Conn)> = None;
    while Instant::now() < until {
        let (client, conn) = match session.take() {
            Some(s) => s,
            None => {
                let login_deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match connect(addr, &tenant.db, &tenant.user, &tenant.password).await {
                        Ok(s) => break s,
                        // The killed session's slot is given back when the
                        // proxy sees its connection close.
                        Err(e) if e.code() == Some(&SqlState::TOO_MANY_CONNECTIONS) => {
                            waited += 1;
                            assert!(Instant::now() < login_deadline, "slot never freed: {e}");
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => panic!("login: {e}"),
                    }
                }
            }
        };
        next_txn += 1;
        let mut txn = Txn {
            id: next_txn,
            ..Txn::default()
        };
        let kill = match rng.below(8) {
            0 => Kill::BetweenStatements,
            1 => Kill::MidCopy,
            2 => Kill::DuringCommit,
            _ => Kill::No,
        };
        let kill_after = rng.below(4);
        let mut commit_sent = false;
        let mut cut = false;
        let mut commit_answered = false;
        let result: Result<(), tokio_postgres::Error> = async {
            client.batch_execute("BEGIN").await?;
            for step in 0..4u64 {
                if kill == Kill::BetweenStatements && step == kill_after {
                    cut = true;
                    return Ok(());
                }
                match rng.below(3) {
                    0 => {
                        for _ in 0..1 + rng.below(4) {
                            next_row += 1;
                            let p = payload(&mut rng);
                            client
                                .execute(
                                    "INSERT INTO rows (id, txn, payload, sum) VALUES ($1, $2, $3, $4)",
                                    &[&next_row, &txn.id, &p, &checksum(p.as_bytes())],
                                )
                                .await?;
                            txn.inserted.insert(next_row, p);
                        }
                    }
                    1 if !mine.is_empty() => {
                        let id = mine[rng.below(mine.len() as u64) as usize];
                        let p = payload(&mut rng);
                        let n = client
                            .execute(
                                "UPDATE rows SET payload = $2, sum = $3, txn = $4 WHERE id = $1",
                                &[&id, &p, &checksum(p.as_bytes()), &txn.id],
                            )
                            .await?;
                        assert_eq!(n, 1, "row {id} of a committed transaction exists");
                        txn.updated.insert(id, p);
                    }
                    _ => {
                        let sink = client
                            .copy_in::<_, Bytes>("COPY rows (id, txn, payload, sum) FROM STDIN")
                            .await?;
                        futures_util::pin_mut!(sink);
                        let rows = 1 + rng.below(40);
                        for r in 0..rows {
                            next_row += 1;
                            let p = payload(&mut rng);
                            let line = format!(
                                "{next_row}\t{}\t{p}\t{}\n",
                                txn.id,
                                checksum(p.as_bytes())
                            );
                            sink.send(Bytes::from(line)).await?;
                            txn.inserted.insert(next_row, p);
                            if kill == Kill::MidCopy && r == rows / 2 {
                                // Flushed, half sent: cut it off here.
                                cut = true;
                                return Ok(());
                            }
                        }
                        sink.finish().await?;
                    }
                }
            }
            // The ledger row commits (or not) with the rest.
            client
                .execute(
                    "INSERT INTO ledger (txn, inserted, updated) VALUES ($1, $2, $3)",
                    &[
                        &txn.id,
                        &(txn.inserted.len() as i32),
                        &(txn.updated.len() as i32),
                    ],
                )
                .await?;
            commit_sent = true;
            if kill == Kill::DuringCommit {
                let commit = client.batch_execute("COMMIT");
                // Cut off after a random moment: before, during or after
                // the cluster commits.
                let pause = Duration::from_micros(rng.below(3_000));
                tokio::select! {
                    r = commit => {
                        r?;
                        commit_answered = true;
                    }
                    _ = tokio::time::sleep(pause) => {}
                }
                cut = true;
                return Ok(());
            }
            client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(e) = &result {
            panic!("worker {worker}: a statement failed without a kill: {e}");
        }
        let fate = match (cut, commit_sent) {
            (false, _) => Fate::Committed,
            (true, false) => Fate::Aborted,
            (true, true) if commit_answered => Fate::Committed,
            (true, true) => Fate::Unknown,
        };
        if fate == Fate::Committed {
            mine.extend(txn.inserted.keys());
        }
        if cut {
            // Kill: the socket goes away without a Terminate.
            conn.abort();
            drop(client);
        } else {
            session = Some((client, conn));
        }
        log.push((txn, fate));
    }
    if let Some((client, conn)) = session {
        drop(client);
        let _ = conn.await;
    }
    (log, waited)
}

async fn churn(duration: Duration) {
    let seed = harden::seed();
    eprintln!("seed {seed} (TEST_SEED={seed} replays the choices)");
    let tenants: Vec<common::Tenant> = (0..TENANTS)
        .map(|_| common::trust_tenant("churn"))
        .collect();
    for t in &tenants {
        let c = common::cluster();
        c.psql(
            &t.db,
            &format!(
                "CREATE TABLE rows (id bigint PRIMARY KEY, txn bigint NOT NULL, \
                 payload text NOT NULL, sum bigint NOT NULL); \
                 CREATE TABLE ledger (txn bigint PRIMARY KEY, inserted int, updated int); \
                 ALTER TABLE rows OWNER TO {u}; ALTER TABLE ledger OWNER TO {u};",
                u = t.user
            ),
        )
        .unwrap();
    }
    // Free tier: two sessions each, so a killed session's slot must come
    // back before its worker can log in again.
    let proxy = common::start_proxy("").await;
    let until = Instant::now() + duration;
    let mut workers = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        for s in 0..SESSIONS_PER_TENANT {
            let w = (i * SESSIONS_PER_TENANT + s + 1) as i64;
            workers.push(tokio::spawn(worker(
                proxy.addr,
                t.clone(),
                w,
                seed ^ (w as u64).wrapping_mul(0x9e37_79b9),
                until,
            )));
        }
    }
    let mut by_tenant: Vec<Vec<(Txn, Fate)>> = (0..TENANTS).map(|_| Vec::new()).collect();
    let mut waits = 0;
    for (i, w) in workers.into_iter().enumerate() {
        let (log, waited) = w.await.expect("worker");
        by_tenant[i / SESSIONS_PER_TENANT].extend(log);
        waits += waited;
    }

    // Every slot comes back: in the proxy and on the cluster.
    for t in &tenants {
        wait_until(Duration::from_secs(5), "every slot free", || {
            proxy.handle.tenant_connections(&t.db) == Some(0)
        })
        .await;
    }
    for t in &tenants {
        harden::wait_only_warm_backends(proxy.handle.shared(), &t.db).await;
    }

    // The data, read straight from the cluster.
    let (mut committed, mut aborted, mut unknown, mut rows_checked) = (0, 0, 0, 0);
    for (t, txns) in tenants.iter().zip(&by_tenant) {
        let (client, conn) = {
            let c = common::cluster();
            let mut config = tokio_postgres::Config::new();
            config
                .host(c.host())
                .port(c.port())
                .dbname(&t.db)
                .user(&t.user);
            config
                .connect(tokio_postgres::NoTls)
                .await
                .expect("direct login")
        };
        let conn = tokio::spawn(conn);
        let ledger: BTreeSet<i64> = client
            .query("SELECT txn FROM ledger", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let stored: BTreeMap<i64, (i64, String, i64)> = client
            .query("SELECT id, txn, payload, sum FROM rows", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect();
        // Replay the transactions that committed, each worker's in its own
        // order: the rows the cluster must hold.
        let mut expected: BTreeMap<i64, (i64, String)> = BTreeMap::new();
        let mut never: BTreeSet<i64> = BTreeSet::new();
        for (txn, fate) in txns {
            let in_ledger = ledger.contains(&txn.id);
            match fate {
                Fate::Committed => {
                    committed += 1;
                    assert!(in_ledger, "committed transaction {} is missing", txn.id)
                }
                Fate::Aborted => {
                    aborted += 1;
                    assert!(
                        !in_ledger,
                        "transaction {} never committed, yet it is there",
                        txn.id
                    )
                }
                Fate::Unknown => unknown += 1,
            }
            if in_ledger {
                for (id, p) in txn.inserted.iter().chain(&txn.updated) {
                    expected.insert(*id, (txn.id, p.clone()));
                }
            } else {
                never.extend(txn.inserted.keys());
            }
        }
        for (id, (_, payload, sum)) in &stored {
            assert_eq!(
                *sum,
                checksum(payload.as_bytes()),
                "row {id}: bytes changed"
            );
            assert!(
                !never.contains(id),
                "row {id} of an uncommitted transaction is there"
            );
        }
        for (id, (txn, payload)) in &expected {
            let Some((stored_txn, stored_payload, _)) = stored.get(id) else {
                panic!("row {id} of committed transaction {txn} is missing");
            };
            assert_eq!(
                stored_txn, txn,
                "row {id}: last written by another transaction"
            );
            assert_eq!(stored_payload, payload, "row {id}: not the bytes sent");
            rows_checked += 1;
        }
        assert_eq!(stored.len(), expected.len(), "rows nobody committed");
        drop(client);
        let _ = conn.await;
    }
    eprintln!(
        "{committed} committed, {aborted} killed before COMMIT, {unknown} killed during COMMIT; \
         {rows_checked} rows checked; {waits} logins waited for a killed session's slot"
    );
    assert!(committed > 0 && aborted > 0, "the run exercised both fates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_survive_random_kills_for_10_s() {
    churn(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "60 s; run with --ignored"]
async fn committed_rows_survive_random_kills_for_60_s() {
    churn(Duration::from_secs(60)).await;
}
