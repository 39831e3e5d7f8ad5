//! Micro-benchmarks of the pump's hot path: the pump's own frame walks
//! (`walk::walk_from_client`, `walk::walk_from_cluster`) without sockets, so that a
//! change to the framing shows up as MB/s here before it shows up (diluted by
//! TLS and PostgreSQL) in the end-to-end harness.
//!
//! Each stream is fed in reads of a fixed size (the pump's 2 KiB small read
//! and 64 KiB large read), since frames straddling reads is the common case
//! for DataRow-heavy results, not the exception.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pgtier::protocol::frame::{put_frame, Scanner};
use pgtier::session::hook::NoHook;
use pgtier::session::walk::{walk_from_client, walk_from_cluster, Splices};

/// A typical `SELECT` result: RowDescription, `rows` DataRows of a few
/// columns, CommandComplete, ReadyForQuery.
fn select_result(rows: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut desc = Vec::new();
    desc.extend_from_slice(&3u16.to_be_bytes());
    for name in ["aid", "abalance", "filler"] {
        desc.extend_from_slice(name.as_bytes());
        desc.push(0);
        desc.extend_from_slice(&[0u8; 18]);
    }
    put_frame(&mut out, b'T', &desc);
    for i in 0..rows {
        let mut row = Vec::new();
        row.extend_from_slice(&3u16.to_be_bytes());
        for col in [i.to_string(), (i * 7 % 5000).to_string(), "x".repeat(84)] {
            row.extend_from_slice(&(col.len() as u32).to_be_bytes());
            row.extend_from_slice(col.as_bytes());
        }
        put_frame(&mut out, b'D', &row);
    }
    put_frame(&mut out, b'C', format!("SELECT {rows}\0").as_bytes());
    put_frame(&mut out, b'Z', b"I");
    out.to_vec()
}

/// `n` simple-protocol Queries, as pgbench `-S` sends them.
fn simple_queries(n: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in 0..n {
        let sql = format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {};\0",
            i + 1
        );
        put_frame(&mut out, b'Q', sql.as_bytes());
    }
    out.to_vec()
}

/// `n` extended-protocol executions of a prepared statement, as pgbench
/// `-M prepared` sends them: Bind, Execute, Sync.
fn prepared_pipeline(n: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in 0..n {
        let mut bind = Vec::new();
        bind.extend_from_slice(b"\0P0_1\0"); // unnamed portal, statement name
        bind.extend_from_slice(&0u16.to_be_bytes()); // parameter formats
        let aid = (i + 1).to_string();
        bind.extend_from_slice(&1u16.to_be_bytes());
        bind.extend_from_slice(&(aid.len() as u32).to_be_bytes());
        bind.extend_from_slice(aid.as_bytes());
        bind.extend_from_slice(&0u16.to_be_bytes()); // result formats
        put_frame(&mut out, b'B', &bind);
        put_frame(&mut out, b'E', b"\0\0\0\0\0");
        put_frame(&mut out, b'S', b"");
    }
    out.to_vec()
}

/// cluster→client: the pump's own walk (`walk::walk_from_cluster`) over the
/// stream cut into reads of `read_size`. Returns ReadyForQuery count.
fn walk_downstream(stream: &[u8], read_size: usize) -> u64 {
    let mut scanner = Scanner::default();
    let mut buf = BytesMut::with_capacity(read_size * 2);
    let mut readies = 0u64;
    for chunk in stream.chunks(read_size) {
        buf.extend_from_slice(chunk);
        let seen = walk_from_cluster(&mut scanner, &buf, &mut NoHook, &mut Splices::default())
            .expect("bench stream is well-formed");
        readies += seen.count;
        black_box(seen.status);
        let walked = scanner.walked();
        black_box(&buf[..walked]);
        buf.advance(walked);
        scanner.consumed();
    }
    readies
}

/// client→cluster: the pump's own walk (`walk::walk_from_client`), headers
/// only. Returns the count of requests that each earn a ReadyForQuery.
fn walk_upstream(stream: &[u8], read_size: usize) -> u64 {
    let mut scanner = Scanner::default();
    let mut buf = BytesMut::with_capacity(read_size * 2);
    let mut total = 0u64;
    for chunk in stream.chunks(read_size) {
        buf.extend_from_slice(chunk);
        let seen = walk_from_client(&mut scanner, &buf, &mut NoHook, &mut Splices::default())
            .expect("bench stream is well-formed");
        total += seen.count;
        black_box(seen.terminate);
        let walked = scanner.walked();
        black_box(&buf[..walked]);
        buf.advance(walked);
        scanner.consumed();
    }
    total
}

fn downstream(c: &mut Criterion) {
    let mut group = c.benchmark_group("cluster_to_client");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let stream = select_result(1000);
    group.throughput(Throughput::Bytes(stream.len() as u64));
    for read_size in [2 * 1024, 64 * 1024] {
        group.bench_with_input(
            BenchmarkId::new("select_1000_rows", read_size),
            &read_size,
            |b, &read_size| {
                b.iter(|| assert_eq!(walk_downstream(black_box(&stream), read_size), 1))
            },
        );
    }
    // Many small results back to back (pgbench -S answers): header-bound.
    let mut small = Vec::new();
    for _ in 0..1000 {
        small.extend(select_result(1));
    }
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("select_1_row_x1000/65536", |b| {
        b.iter(|| assert_eq!(walk_downstream(black_box(&small), 64 * 1024), 1000))
    });
    group.finish();
}

fn upstream(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_to_cluster");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, stream) in [
        ("query_x1000", simple_queries(1000)),
        ("bind_execute_sync_x1000", prepared_pipeline(1000)),
    ] {
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(format!("{name}/2048"), |b| {
            b.iter(|| assert_eq!(walk_upstream(black_box(&stream), 2048), 1000))
        });
    }
    group.finish();
}

criterion_group!(benches, downstream, upstream);
criterion_main!(benches);
