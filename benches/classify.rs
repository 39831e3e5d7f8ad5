//! Micro-benchmarks of the statement classifier (`rules::classify`): what the
//! per-session hook will pay for each Query or Parse text.
//!
//! Three groups, one statement set:
//! - `lexical`: the fast path alone (`classify_lexical`), for the statements
//!   it decides: this is what nearly all application traffic costs;
//! - `parser`: PostgreSQL's grammar (`classify_parsed`, no fast path, no
//!   cache): what a statement costs the first time it reaches the parser;
//! - `cached`: the shared `Classifier`, warmed up, as sessions call it: fast
//!   path where it decides, otherwise a cache hit.
//!
//! Statement shapes are the ones ORMs send (Ecto, ActiveRecord, Django,
//! Prisma), plus bulk INSERTs and a 20 KB SELECT for the lexer's per-byte cost.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use pgtier::rules::classify::{classify_lexical, classify_parsed, Classifier};

/// (name, SQL) of the statements measured.
fn statements() -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = vec![
        (
            "ecto_select",
            "SELECT u0.\"id\", u0.\"email\", u0.\"name\", u0.\"confirmed_at\", u0.\"inserted_at\", \
             u0.\"updated_at\" FROM \"users\" AS u0 WHERE (u0.\"email\" = $1) AND (u0.\"active\" = $2) \
             ORDER BY u0.\"inserted_at\" DESC LIMIT $3"
                .into(),
        ),
        (
            "activerecord_select",
            "SELECT \"posts\".* FROM \"posts\" INNER JOIN \"users\" ON \"users\".\"id\" = \
             \"posts\".\"user_id\" WHERE \"users\".\"account_id\" = $1 AND \"posts\".\"published\" = \
             $2 ORDER BY \"posts\".\"created_at\" DESC LIMIT $3 OFFSET $4"
                .into(),
        ),
        (
            "django_select",
            "SELECT \"auth_user\".\"id\", \"auth_user\".\"password\", \"auth_user\".\"last_login\", \
             \"auth_user\".\"is_superuser\", \"auth_user\".\"username\", \"auth_user\".\"email\" FROM \
             \"auth_user\" WHERE \"auth_user\".\"username\" = 'admin' LIMIT 21"
                .into(),
        ),
        (
            "prisma_select",
            "SELECT \"public\".\"Post\".\"id\", \"public\".\"Post\".\"title\", \
             COALESCE(\"aggr_selection_0_Comment\".\"_aggr_count_comments\", 0) AS \
             \"_aggr_count_comments\" FROM \"public\".\"Post\" LEFT JOIN (SELECT \
             \"public\".\"Comment\".\"postId\", COUNT(*) AS \"_aggr_count_comments\" FROM \
             \"public\".\"Comment\" WHERE 1=1 GROUP BY \"public\".\"Comment\".\"postId\") AS \
             \"aggr_selection_0_Comment\" ON (\"public\".\"Post\".\"id\" = \
             \"aggr_selection_0_Comment\".\"postId\") WHERE \"public\".\"Post\".\"authorId\" = $1 \
             OFFSET $2"
                .into(),
        ),
        (
            "ecto_insert",
            "INSERT INTO \"users\" (\"email\",\"name\",\"inserted_at\",\"updated_at\") VALUES \
             ($1,$2,$3,$4) RETURNING \"id\""
                .into(),
        ),
        (
            "activerecord_update",
            "UPDATE \"users\" SET \"name\" = $1, \"updated_at\" = $2 WHERE \"users\".\"id\" = $3".into(),
        ),
        ("begin", "BEGIN".into()),
        // Column names that start like a large-object function's stay on
        // the fast path.
        (
            "lo_lookalike_select",
            "SELECT u0.\"id\", u0.\"login\", u0.\"locale\", u0.\"lock_version\", \
             u0.\"location\" FROM \"users\" AS u0 WHERE (u0.\"login\" = $1) LIMIT $2"
                .into(),
        ),
        // Parser territory: a data-modifying CTE, a migration, a function.
        (
            "cte_insert",
            "WITH moved AS (DELETE FROM \"jobs\" WHERE \"state\" = 'done' RETURNING *) INSERT INTO \
             \"jobs_archive\" SELECT * FROM moved"
                .into(),
        ),
        (
            "ecto_migration",
            "CREATE TABLE \"posts\" (\"id\" bigserial, \"title\" varchar(255), \"body\" text, \
             \"user_id\" bigint CONSTRAINT \"posts_user_id_fkey\" REFERENCES \"users\"(\"id\"), \
             \"inserted_at\" timestamp(0) NOT NULL, PRIMARY KEY (\"id\"))"
                .into(),
        ),
        (
            "create_function",
            "CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             NEW.updated_at = now(); RETURN NEW; END $$"
                .into(),
        ),
        // Postgrex.Notifications' re-subscription: a DO block the parser
        // and the PL/pgSQL compiler judge.
        ("do_listen", "DO $$BEGIN LISTEN \"chan\"; END$$".into()),
    ];
    out.push(("insert_100_rows", multi_row_insert(100)));
    out.push(("insert_1mb", multi_row_insert_bytes(1 << 20)));
    out.push(("select_20kb", wide_select(20 * 1024)));
    out
}

fn row(i: usize) -> String {
    format!("({i}, 'event {i}', '{{\"user\": {i}, \"kind\": \"click\"}}', now())")
}

fn multi_row_insert(rows: usize) -> String {
    let rows: Vec<String> = (0..rows).map(row).collect();
    format!(
        "INSERT INTO \"events\" (\"id\", \"name\", \"payload\", \"at\") VALUES {}",
        rows.join(", ")
    )
}

fn multi_row_insert_bytes(bytes: usize) -> String {
    let mut sql = multi_row_insert(1);
    let mut i = 1;
    while sql.len() < bytes {
        sql.push_str(", ");
        sql.push_str(&row(i));
        i += 1;
    }
    sql
}

fn wide_select(bytes: usize) -> String {
    let mut columns = Vec::new();
    let mut len = 0;
    let mut i = 0;
    while len < bytes {
        let c = format!("t.\"column_{i}\"");
        len += c.len() + 2;
        columns.push(c);
        i += 1;
    }
    format!(
        "SELECT {} FROM \"t\" AS t WHERE t.\"id\" = $1",
        columns.join(", ")
    )
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    group
}

fn lexical(c: &mut Criterion) {
    let mut group = configure(c, "lexical");
    for (name, sql) in statements() {
        if classify_lexical(&sql).is_none() {
            continue; // the parser's: nothing to measure here
        }
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(name, |b| b.iter(|| classify_lexical(black_box(&sql))));
    }
    group.finish();
}

fn parser(c: &mut Criterion) {
    let mut group = configure(c, "parser");
    group.sample_size(20);
    for (name, sql) in statements() {
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(name, |b| b.iter(|| classify_parsed(black_box(&sql))));
    }
    group.finish();
}

fn cached(c: &mut Criterion) {
    let mut group = configure(c, "cached");
    let classifier = Classifier::new();
    for (name, sql) in statements() {
        classifier.classify(&sql); // warm the cache
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(name, |b| b.iter(|| classifier.classify(black_box(&sql))));
    }
    group.finish();
}

criterion_group!(benches, lexical, parser, cached);
criterion_main!(benches);
