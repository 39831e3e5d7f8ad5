//! The storage limit: how many bytes a tenant's database may take on the
//! shared cluster's disk, and the words clients read about it.
//!
//! The size is the cluster's own figure, `pg_database_size(current_database())`,
//! taken by the quota auditor with each measurement (it reads file sizes and
//! takes no table lock, so no tenant can hold it off the way a lock holds off
//! counting rows). While a tenant is over, statements that can grow the
//! database are refused with `53100` (PostgreSQL's `disk_full`, what it
//! answers when it cannot extend a file): every statement that adds rows
//! (the row quota's verdict), and every statement the classifier does not
//! know to grow nothing ([`crate::rules::classify::Classification::grows_storage`]:
//! UPDATE, CREATE INDEX, REINDEX, CREATE TABLE, ALTER TABLE, CLUSTER, REFRESH
//! MATERIALIZED VIEW, large-object writes, …). Reads, DELETE, TRUNCATE,
//! DROP, VACUUM (FULL), ANALYZE, settings and transaction control always
//! pass, so a tenant can always get back under.
//!
//! Sizes in the configuration are PostgreSQL's memory units, as
//! `pg_size_bytes` reads them: `kB`, `MB`, `GB`, `TB` are powers of 1024.

use crate::refusal::Refusal;
use crate::rules::policy::WARN_AT_PERCENT;

/// A `WARNING` for a session that logs in at 80 % of its storage limit or
/// more; `None` below that, with no limit, or when nothing is measured yet.
pub fn storage_limit_warning(
    database: &str,
    bytes: Option<u64>,
    limit: u64,
    tier: &str,
) -> Option<Refusal> {
    let bytes = bytes?;
    if limit == 0 || u128::from(bytes) * 100 < u128::from(limit) * u128::from(WARN_AT_PERCENT) {
        return None;
    }
    Some(Refusal::StorageLimitWarning {
        database: database.to_owned(),
        bytes,
        limit,
        tier: tier.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::classify::classify;

    #[test]
    fn the_refusal_names_the_figures_and_how_to_get_back_under() {
        let e = Refusal::StorageLimit {
            database: "hobby".to_owned(),
            bytes: 270 << 20,
            limit: 256 << 20,
            tier: "free".to_owned(),
        }
        .render();
        assert_eq!(e.code, "53100");
        assert_eq!(
            e.message,
            "storage limit exceeded: database \"hobby\" uses 270 MB; the free tier allows 256 MB"
        );
        let hint = e.hint.unwrap_or_default();
        assert!(
            hint.contains("TRUNCATE") && hint.contains("VACUUM FULL"),
            "{hint}"
        );
        let unmeasured = Refusal::StorageUnmeasured {
            database: "hobby".to_owned(),
            tier: "free".to_owned(),
        };
        assert_eq!(unmeasured.render().code, "53100");
    }

    #[test]
    fn warned_from_80_percent() {
        let limit = 100 << 20;
        assert!(storage_limit_warning("d", Some(79 << 20), limit, "free").is_none());
        let w = storage_limit_warning("d", Some(80 << 20), limit, "free")
            .unwrap()
            .render();
        assert_eq!(
            w.message,
            "database \"d\" uses 80 MB of the 100 MB its free tier allows"
        );
        assert!(storage_limit_warning("d", Some(u64::MAX), 0, "free").is_none());
        assert!(storage_limit_warning("d", None, limit, "free").is_none());
    }

    /// Which statements the storage limit refuses while over (`true`) and
    /// which always pass (`false`): the classifier's verdict, rows or not.
    #[test]
    fn which_statements_grow_storage() {
        let corpus: &[(&str, bool)] = &[
            // Adds rows: grows.
            ("INSERT INTO t VALUES (1)", true),
            ("insert into t select * from t", true),
            ("COPY t FROM STDIN", true),
            ("CREATE TABLE t2 AS SELECT * FROM t", true),
            ("SELECT * INTO t2 FROM t", true),
            ("SELECT lo_from_bytea(0, 'x')", true),
            ("SELECT pg_catalog.LO_PUT(1, 0, 'x')", true),
            ("SELECT lo_import('/etc/passwd')", true),
            ("CALL p()", true),
            (
                "MERGE INTO t USING s ON t.a = s.a WHEN NOT MATCHED THEN INSERT VALUES (s.a)",
                true,
            ),
            // Grows without adding rows.
            ("UPDATE t SET a = a + 1", true),
            ("uPdAtE t SET a = 1", true),
            ("/* x */ UPDATE t SET a = 1", true),
            (
                "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
                true,
            ),
            ("WITH x AS (SELECT 1) UPDATE t SET a = 1", true),
            (
                "DELETE FROM t WHERE a IN (SELECT a FROM (SELECT 1 AS a) s); UPDATE t SET a = 2",
                true,
            ),
            (
                "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN UPDATE SET a = s.a",
                true,
            ),
            ("CREATE INDEX ON t (a)", true),
            ("CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)", true),
            ("REINDEX TABLE t", true),
            ("CREATE TABLE t3 (a int)", true),
            ("CREATE TEMP TABLE t3 (a int)", true),
            ("CREATE MATERIALIZED VIEW m AS SELECT 1", true),
            ("CREATE MATERIALIZED VIEW m AS SELECT 1 WITH NO DATA", true),
            ("REFRESH MATERIALIZED VIEW m", true),
            ("ALTER TABLE t ADD COLUMN b text DEFAULT 'x'", true),
            ("ALTER TABLE t ALTER COLUMN a TYPE bigint", true),
            ("CLUSTER t USING i", true),
            ("CREATE SCHEMA s CREATE TABLE u (a int)", true),
            ("EXPLAIN ANALYZE UPDATE t SET a = 1", true),
            ("DO $$BEGIN UPDATE t SET a = 1; END$$", true),
            ("DO $$BEGIN DELETE FROM t; END$$", false),
            ("COMMENT ON TABLE t IS 'x'", true),
            ("SELEC 1", true),
            // Always allowed: nothing grows.
            ("SELECT * FROM t", false),
            ("SELECT * FROM t FOR UPDATE", false),
            ("WITH x AS (SELECT 1) SELECT * FROM x", false),
            ("TABLE t", false),
            ("DELETE FROM t", false),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d",
                false,
            ),
            ("TRUNCATE t", false),
            ("DROP TABLE t", false),
            ("DROP INDEX i", false),
            ("DROP SCHEMA s CASCADE", false),
            ("VACUUM", false),
            ("VACUUM FULL t", false),
            ("VACUUM (FULL, ANALYZE) t", false),
            ("ANALYZE t", false),
            ("SELECT lo_unlink(16384)", false),
            ("SET statement_timeout = 0", false),
            ("RESET ALL", false),
            ("SHOW work_mem", false),
            ("BEGIN", false),
            ("COMMIT", false),
            ("ROLLBACK", false),
            ("SAVEPOINT a", false),
            ("LOCK TABLE t", false),
            ("LISTEN c", false),
            ("NOTIFY c", false),
            ("EXPLAIN UPDATE t SET a = 1", false),
            ("COPY t TO STDOUT", false),
            ("DEALLOCATE ALL", false),
            ("DISCARD ALL", false),
            ("CLOSE c", false),
            ("DECLARE c CURSOR FOR SELECT 1", false),
        ];
        let mut wrong = Vec::new();
        for (sql, grows) in corpus {
            if classify(sql).grows() != *grows {
                wrong.push(format!("{sql:?}: want grows = {grows}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // Prepared statements carry their body's verdict, rows apart.
        let p = classify("PREPARE u AS UPDATE t SET a = $1");
        assert!(!p.grows(), "preparing grows nothing");
        assert_eq!(
            p.prepares,
            vec![("u".to_owned(), crate::rules::classify::Writes::STORAGE)]
        );
        let p = classify("PREPARE i AS INSERT INTO t VALUES ($1)");
        assert_eq!(
            p.prepares,
            vec![("i".to_owned(), crate::rules::classify::Writes::ALL)]
        );
    }
}
