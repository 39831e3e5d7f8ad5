//! The classifier's statement corpus: every entry is checked through
//! [`classify`], the shared [`Classifier`] (cold and cached), and, where the
//! lexical pass answers, against the parser's verdict.

use std::sync::Arc;

use super::verdict::*;
use super::*;

/// Every feature the classifier can report, for the expectations below.
fn all_features() -> Vec<Feature> {
    let mut all = vec![
        CREATE_EXTENSION,
        ALTER_EXTENSION,
        DROP_EXTENSION,
        CREATE_FUNCTION,
        CREATE_PROCEDURE,
        CREATE_AGGREGATE,
        CREATE_LANGUAGE,
        CREATE_LANGUAGE_EXTENSION,
        DO,
        DO_DYNAMIC,
        DO_LANGUAGE,
        DO_PREPARED,
        STORED_ROW_FUNCTION,
        CREATE_TRIGGER,
        CREATE_EVENT_TRIGGER,
        CREATE_RULE,
        GRANT_ROLE,
        REVOKE_ROLE,
    ];
    all.extend(ROLE_FEATURES.iter().flatten());
    all
}

/// An expectation in a few words, comma-separated: `adds`, `remeasure`,
/// `unparsed`, `prep NAME [adds|grows]`, `exec NAME`, `fetch NAME`, `cursor NAME`,
/// `dealloc NAME`, `dealloc *`,
/// or a feature's name ("CREATE EXTENSION"; "CREATE LANGUAGE" is the pair of
/// features a parameterless CREATE LANGUAGE uses, "CREATE LANGUAGE HANDLER"
/// the one of the form with a handler). Empty: plain.
fn expect(spec: &str) -> Classification {
    let features = all_features();
    let mut c = Classification::default();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let words: Vec<&str> = item.split(' ').collect();
        match words.as_slice() {
            ["adds"] => c.adds_rows = true,
            ["remeasure"] => c.remeasure = true,
            ["unparsed"] => c.unparsed = true,
            ["prep", name] => c.prepares.push((name.to_string(), Writes::NONE)),
            ["prep", name, "adds"] => c.prepares.push((name.to_string(), Writes::ALL)),
            ["prep", name, "grows"] => c.prepares.push((name.to_string(), Writes::STORAGE)),
            ["exec", name] => c.executes.push(name.to_string()),
            ["fetch", name] => c.fetches.push(name.to_string()),
            ["cursor", name] => c.cursors.push((name.to_string(), false)),
            ["cursor", name, "adds"] => c.cursors.push((name.to_string(), true)),
            ["dealloc", "*"] => c.deallocates.push(None),
            ["dealloc", name] => c.deallocates.push(Some(name.to_string())),
            // "CREATE LANGUAGE" is two features (see CREATE_LANGUAGE_EXTENSION).
            ["CREATE", "LANGUAGE"] => c
                .features
                .extend([CREATE_LANGUAGE, CREATE_LANGUAGE_EXTENSION]),
            // With a HANDLER it defines the language itself: function only.
            ["CREATE", "LANGUAGE", "HANDLER"] => c.features.push(CREATE_LANGUAGE),
            _ => match features.iter().find(|f| f.name == item) {
                Some(f) => c.features.push(*f),
                None => panic!("bad expectation {item:?}"),
            },
        }
    }
    c
}

const UNPARSED: &str = "adds, remeasure, unparsed";

/// (statement, expected verdict).
const CORPUS: &[(&str, &str)] = &[
    // --- Lookalikes: keywords in strings, identifiers and comments -------
    ("SELECT 1", ""),
    ("select 'create extension'", ""),
    ("SELECT 'CREATE EXTENSION hstore; CREATE ROLE x'", ""),
    ("SELECT 1 AS \"trigger\"", ""),
    ("SELECT trigger FROM events", ""),
    ("SELECT t.\"trigger\", t.function, t.role FROM events t", ""),
    ("-- CREATE FUNCTION f()\nSELECT 1", ""),
    ("/* CREATE FUNCTION f() */ SELECT 1", ""),
    ("/* outer /* CREATE EXTENSION x; */ still a comment; */ SELECT 1", ""),
    ("SELECT $$CREATE ROLE x$$", ""),
    ("SELECT $fn$ CREATE ROLE x; INSERT INTO t VALUES (1) $fn$", ""),
    ("SELECT $a$ it's $b$ not the end $ $a$", ""),
    ("SELECT $_$ x $_$ || $q1$ y $q1$", ""),
    ("SELECT $1::text", ""),
    ("SELECT $1, $2 FROM t WHERE a = $3", ""),
    ("SELECT E'it\\'s INSERT'", ""),
    ("SELECT e'\\\\'; SELECT 1", ""),
    ("SELECT 'it''s; CREATE EXTENSION x'", ""),
    ("SELECT U&'d\\0061t\\+000061; INSERT'", ""),
    ("SELECT U&\"d\\0061t\\+000061\" FROM t", ""),
    ("SELECT n'national; INSERT'", ""),
    ("SELECT B'0101', X'1F'", ""),
    ("SELECT \"into\" FROM t", ""),
    ("SELECT \"a\"\"; INSERT\" FROM t", ""),
    ("SELECT a$$b FROM t", ""),
    ("SELECT 'a' -- comment; CREATE EXTENSION x\n", ""),
    ("SELECT 1 /* ; DROP ROLE x */", ""),
    ("SELECT 1+--comment; CREATE ROLE x\n2", ""),
    ("SELECT * FROM pg_extension WHERE extname = 'hstore'", ""),
    ("SELECT 'a'\n'b; GRANT admin TO bob'", ""),
    ("SELECT 'C:\\path\\to'", ""),
    ("SELECT ';'; SELECT 1", ""),
    ("NOTIFY ch, 'payload; CREATE ROLE x'", ""),
    ("SELECT insert, merge, analyze FROM t", ""),
    // --- Deny-able features in every spelling ----------------------------
    ("CREATE EXTENSION hstore", "CREATE EXTENSION"),
    ("create extension if not exists \"uuid-ossp\"", "CREATE EXTENSION"),
    ("cReAtE eXtEnSiOn hstore", "CREATE EXTENSION"),
    ("CREATE EXTENSION pgcrypto WITH SCHEMA public", "CREATE EXTENSION"),
    ("/* leading */ -- comment\n  CREATE EXTENSION hstore", "CREATE EXTENSION"),
    ("SELECT 1; CREATE EXTENSION hstore", "CREATE EXTENSION"),
    ("select 'x';create extension hstore;", "CREATE EXTENSION"),
    ("CREATE EXTENSION a; CREATE EXTENSION b", "CREATE EXTENSION, CREATE EXTENSION"),
    ("ALTER EXTENSION hstore UPDATE", "ALTER EXTENSION"),
    ("ALTER EXTENSION hstore UPDATE TO '1.8'", "ALTER EXTENSION"),
    ("ALTER EXTENSION hstore SET SCHEMA s", "ALTER EXTENSION"),
    ("ALTER EXTENSION hstore ADD FUNCTION f(int)", "ALTER EXTENSION"),
    ("DROP EXTENSION hstore", "DROP EXTENSION"),
    ("drop extension if exists hstore, citext cascade", "DROP EXTENSION"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", "CREATE FUNCTION"),
    (
        "create or replace function f() returns trigger language plpgsql as $$ begin return new; end $$",
        "CREATE FUNCTION",
    ),
    ("CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql", "CREATE FUNCTION"),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); SELECT 1; END",
        "CREATE FUNCTION",
    ),
    ("CREATE PROCEDURE p() LANGUAGE sql AS $$ INSERT INTO t VALUES (1) $$", "CREATE PROCEDURE"),
    ("CREATE OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN END $$", "CREATE PROCEDURE"),
    ("CREATE AGGREGATE myavg(int) (SFUNC = int4_avg_accum, STYPE = _int8)", "CREATE AGGREGATE"),
    (
        "CREATE OR REPLACE AGGREGATE mysum(int) (SFUNC = int4pl, STYPE = int)",
        "CREATE AGGREGATE",
    ),
    ("CREATE TYPE t AS (a int)", ""),
    ("CREATE LANGUAGE plperl", "CREATE LANGUAGE"),
    ("CREATE TRUSTED LANGUAGE plperl", "CREATE LANGUAGE"),
    ("CREATE OR REPLACE PROCEDURAL LANGUAGE plperl", "CREATE LANGUAGE"),
    (
        "CREATE TRUSTED PROCEDURAL LANGUAGE plsample HANDLER plsample_call_handler",
        "CREATE LANGUAGE HANDLER",
    ),
    ("DO $$ BEGIN INSERT INTO t VALUES (1); END $$", "adds, remeasure"),
    ("do 'begin null; end'", ""),
    ("DO LANGUAGE plpgsql $$ BEGIN END $$", ""),
    (
        "CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE TRIGGER",
    ),
    (
        "create or replace trigger trg after update on t for each statement execute procedure f()",
        "CREATE TRIGGER",
    ),
    (
        "CREATE CONSTRAINT TRIGGER trg AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE TRIGGER",
    ),
    (
        "CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION f()",
        "CREATE EVENT TRIGGER",
    ),
    ("CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", "CREATE RULE"),
    (
        "CREATE OR REPLACE RULE r AS ON UPDATE TO t DO ALSO (INSERT INTO log VALUES (1); NOTIFY t)",
        "CREATE RULE",
    ),
    (
        "CREATE SCHEMA s CREATE TABLE t (a int) CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE TRIGGER",
    ),
    ("CREATE SCHEMA s CREATE TABLE t (a int)", ""),
    ("ALTER TRIGGER trg ON t RENAME TO trg2", ""),
    ("DROP TRIGGER trg ON t", ""),
    ("DROP FUNCTION f()", ""),
    ("CREATE ROLE app LOGIN PASSWORD 'x'", "CREATE ROLE"),
    ("create user bob with password 'x'", "CREATE USER"),
    ("CREATE GROUP staff", "CREATE GROUP"),
    ("ALTER ROLE app SET search_path = s", "ALTER ROLE"),
    ("ALTER ROLE app WITH SUPERUSER", "ALTER ROLE"),
    ("ALTER ROLE ALL SET work_mem = '64MB'", "ALTER ROLE"),
    ("ALTER USER bob PASSWORD 'y'", "ALTER USER"),
    ("alter user current_user set work_mem = '64MB'", "ALTER USER"),
    ("ALTER GROUP staff ADD USER bob", "ALTER GROUP"),
    ("ALTER GROUP staff DROP USER bob", "ALTER GROUP"),
    ("ALTER ROLE app RENAME TO app2", "ALTER ROLE"),
    ("/* c */ ALTER\n\tUSER bob RENAME TO robert", "ALTER USER"),
    ("DROP ROLE app", "DROP ROLE"),
    ("DROP USER IF EXISTS bob", "DROP USER"),
    ("DROP GROUP staff", "DROP GROUP"),
    ("SELECT 1; DROP USER bob; SELECT 2", "DROP USER"),
    ("GRANT admin TO bob", "GRANT"),
    ("GRANT admin TO bob WITH ADMIN OPTION", "GRANT"),
    ("REVOKE admin FROM bob", "REVOKE"),
    ("GRANT SELECT ON t TO bob", ""),
    ("GRANT ALL ON SCHEMA public TO PUBLIC", ""),
    ("REVOKE USAGE ON SCHEMA public FROM PUBLIC", ""),
    ("GRANT SELECT ON ALL TABLES IN SCHEMA public TO app", ""),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO app", ""),
    ("CREATE USER MAPPING FOR bob SERVER s", ""),
    ("SET ROLE app", ""),
    ("RESET ROLE", ""),
    (
        "DO $$ BEGIN END $$; CREATE ROLE x; GRANT x TO y",
        "CREATE ROLE, GRANT",
    ),
    // --- Row-adding forms -------------------------------------------------
    ("INSERT INTO t VALUES (1)", "adds"),
    ("insert into t (a) select a from u", "adds"),
    ("INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2", "adds"),
    ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING RETURNING id", "adds"),
    ("INSERT INTO t (insert) VALUES (1)", "adds"),
    (
        "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
        "adds, remeasure",
    ),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "adds"),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r",
        "",
    ),
    ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x", ""),
    ("WITH x AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM x", "adds"),
    (
        "INSERT INTO a WITH x AS (INSERT INTO b VALUES (1) RETURNING *) SELECT * FROM x",
        "adds, remeasure",
    ),
    (
        "WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id) RETURNING *) SELECT * FROM m",
        "adds, remeasure",
    ),
    (
        "WITH a AS (SELECT 1), b AS (INSERT INTO t SELECT * FROM a RETURNING 1) DELETE FROM u",
        "adds, remeasure",
    ),
    ("COPY t FROM STDIN", "adds"),
    ("copy t (a, b) from stdin with (format csv)", "adds"),
    ("COPY t FROM '/tmp/x.csv'", "adds"),
    ("COPY t FROM PROGRAM 'cat /tmp/x'", "adds"),
    ("COPY t FROM STDIN WHERE a > 1", "adds"),
    ("COPY t TO STDOUT", ""),
    ("COPY t TO STDOUT WITH (FORMAT csv, HEADER)", ""),
    ("COPY (SELECT * FROM t) TO STDOUT", ""),
    ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", "adds, remeasure"),
    ("CREATE TABLE t2 AS SELECT * FROM t", "adds, remeasure"),
    ("CREATE TABLE t2 AS SELECT * FROM t WITH NO DATA", "remeasure"),
    ("CREATE TEMP TABLE t2 AS EXECUTE p", "adds, remeasure, exec p"),
    ("CREATE TABLE IF NOT EXISTS t2 AS VALUES (1)", "adds, remeasure"),
    ("SELECT * INTO t2 FROM t", "adds, remeasure"),
    ("SELECT 1 INTO TEMP t2", "adds, remeasure"),
    ("select a into t2 from t union select b from u", "adds, remeasure"),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)",
        "adds, remeasure",
    ),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "remeasure",
    ),
    ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", "adds, remeasure"),
    ("CREATE MATERIALIZED VIEW mv AS SELECT 1 WITH NO DATA", "remeasure"),
    ("REFRESH MATERIALIZED VIEW mv", "adds, remeasure"),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", "adds, remeasure"),
    ("REFRESH MATERIALIZED VIEW mv WITH NO DATA", "remeasure"),
    ("CREATE VIEW v AS SELECT * FROM t", ""),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "adds, remeasure"),
    ("EXPLAIN INSERT INTO t VALUES (1)", ""),
    ("EXPLAIN (ANALYZE, BUFFERS) INSERT INTO t VALUES (1)", "adds, remeasure"),
    ("EXPLAIN (ANALYZE false) INSERT INTO t VALUES (1)", ""),
    ("EXPLAIN (ANALYZE off, FORMAT json) INSERT INTO t VALUES (1)", ""),
    ("EXPLAIN (ANALYZE 0) INSERT INTO t VALUES (1)", ""),
    ("EXPLAIN (ANALYZE on) INSERT INTO t VALUES (1)", "adds, remeasure"),
    ("EXPLAIN ANALYSE SELECT * FROM t", ""),
    ("EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1", "adds, remeasure"),
    ("EXPLAIN ANALYZE EXECUTE p", "exec p"),
    ("EXPLAIN EXECUTE p", ""),
    ("EXPLAIN SELECT * FROM t", ""),
    ("EXPLAIN (FORMAT json, VERBOSE) SELECT * FROM t", ""),
    ("CALL do_work(1)", "adds, remeasure"),
    // --- Re-measure only --------------------------------------------------
    ("TRUNCATE t", "remeasure"),
    ("TRUNCATE TABLE a, b RESTART IDENTITY CASCADE", "remeasure"),
    ("DROP TABLE t", "remeasure"),
    ("DROP TABLE IF EXISTS a, b CASCADE", "remeasure"),
    ("DROP SCHEMA s CASCADE", "remeasure"),
    ("DROP MATERIALIZED VIEW mv", "remeasure"),
    ("DROP OWNED BY app", "remeasure"),
    ("DROP VIEW v", ""),
    ("DROP INDEX i", ""),
    ("ALTER TABLE p ATTACH PARTITION p1 FOR VALUES FROM (1) TO (10)", "remeasure"),
    ("ALTER TABLE p DETACH PARTITION p1", "remeasure"),
    ("ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY", "remeasure"),
    ("ALTER TABLE p DETACH PARTITION p1 FINALIZE", "remeasure"),
    ("SELECT 1; TRUNCATE t", "remeasure"),
    // --- SQL-level prepared statements ------------------------------------
    ("PREPARE ins (int) AS INSERT INTO t VALUES ($1)", "prep ins adds"),
    ("PREPARE sel AS SELECT * FROM t WHERE id = $1", "prep sel"),
    ("PREPARE \"MixedCase\" AS SELECT 1", "prep MixedCase"),
    ("PREPARE MixedCase AS SELECT 1", "prep mixedcase"),
    (
        "PREPARE w AS WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
        "prep w adds",
    ),
    ("PREPARE m AS MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id)", "prep m adds"),
    ("EXECUTE ins(1)", "exec ins"),
    ("EXECUTE \"MixedCase\"", "exec MixedCase"),
    ("DEALLOCATE ins", "dealloc ins"),
    ("DEALLOCATE PREPARE ins", "dealloc ins"),
    ("DEALLOCATE ALL", "dealloc *"),
    ("DEALLOCATE PREPARE ALL", "dealloc *"),
    ("DISCARD ALL", "dealloc *"),
    ("DISCARD PLANS", ""),
    ("discard temp", ""),
    (
        "PREPARE p AS INSERT INTO t VALUES (1); EXECUTE p; DEALLOCATE p",
        "prep p adds, exec p, dealloc p",
    ),
    // --- ORM and driver traffic --------------------------------------------
    (
        "SELECT s0.\"id\", s0.\"email\", s0.\"inserted_at\" FROM \"users\" AS s0 WHERE (s0.\"id\" = $1)",
        "",
    ),
    (
        "SELECT s0.\"version\"::bigint FROM \"schema_migrations\" AS s0 FOR UPDATE",
        "",
    ),
    (
        "INSERT INTO \"users\" (\"email\",\"inserted_at\",\"updated_at\") VALUES ($1,$2,$3) RETURNING \"id\"",
        "adds",
    ),
    (
        "UPDATE \"users\" SET \"email\" = $1, \"updated_at\" = $2 WHERE \"id\" = $3",
        "",
    ),
    ("DELETE FROM \"users\" WHERE \"id\" = $1", ""),
    (
        "CREATE TABLE IF NOT EXISTS \"schema_migrations\" (\"version\" bigint, \"inserted_at\" timestamp(0), PRIMARY KEY (\"version\"))",
        "",
    ),
    (
        "CREATE TABLE \"posts\" (\"id\" bigserial, \"title\" varchar(255), \"user_id\" bigint CONSTRAINT \"posts_user_id_fkey\" REFERENCES \"users\"(\"id\"), PRIMARY KEY (\"id\"))",
        "",
    ),
    ("CREATE INDEX \"posts_user_id_index\" ON \"posts\" (\"user_id\")", ""),
    ("CREATE UNIQUE INDEX CONCURRENTLY \"users_email_index\" ON \"users\" (\"email\")", ""),
    ("ALTER TABLE \"posts\" ADD COLUMN \"body\" text", ""),
    ("INSERT INTO \"schema_migrations\" (\"version\",\"inserted_at\") VALUES ($1,$2)", "adds"),
    ("LOCK TABLE \"schema_migrations\" IN SHARE UPDATE EXCLUSIVE MODE", ""),
    ("begin", ""),
    ("BEGIN; COMMIT;", ""),
    ("BEGIN; INSERT INTO t VALUES (1); COMMIT", "adds"),
    (
        "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
        "",
    ),
    (
        "SELECT 1 AS one FROM \"users\" WHERE \"users\".\"email\" = $1 LIMIT $2",
        "",
    ),
    (
        "INSERT INTO \"users\" (\"name\", \"created_at\", \"updated_at\") VALUES ($1, $2, $3) RETURNING \"id\"",
        "adds",
    ),
    ("SAVEPOINT active_record_1", ""),
    ("RELEASE SAVEPOINT active_record_1", ""),
    ("ROLLBACK TO SAVEPOINT active_record_1", ""),
    (
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.atttypid, a.atttypmod, c.collname, col_description(a.attrelid, a.attnum) AS comment, attidentity AS identity, attgenerated as attgenerated FROM pg_attribute a LEFT JOIN pg_attrdef d ON a.attrelid = d.adrelid AND a.attnum = d.adnum LEFT JOIN pg_type t ON a.atttypid = t.oid LEFT JOIN pg_collation c ON a.attcollation = c.oid AND a.attcollation <> t.typcollation WHERE a.attrelid = '\"users\"'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        "",
    ),
    (
        "SELECT \"auth_user\".\"id\", \"auth_user\".\"password\" FROM \"auth_user\" WHERE \"auth_user\".\"username\" = 'admin' LIMIT 21",
        "",
    ),
    (
        "INSERT INTO \"django_session\" (\"session_key\", \"session_data\", \"expire_date\") VALUES ('abc', 'data', '2024-01-01T00:00:00+00:00'::timestamptz)",
        "adds",
    ),
    (
        "SELECT (1) AS \"a\" FROM \"django_session\" WHERE \"django_session\".\"session_key\" = 'x' LIMIT 1",
        "",
    ),
    (
        "SELECT \"public\".\"User\".\"id\", \"public\".\"User\".\"email\" FROM \"public\".\"User\" WHERE (\"public\".\"User\".\"email\" = $1 AND 1=1) LIMIT $2 OFFSET $3",
        "",
    ),
    (
        "INSERT INTO \"public\".\"Post\" (\"title\",\"authorId\") VALUES ($1,$2) RETURNING \"public\".\"Post\".\"id\"",
        "adds",
    ),
    (
        "SELECT \"public\".\"Post\".\"id\", COALESCE(\"aggr_selection_0_Comment\".\"_aggr_count_comments\", 0) AS \"_aggr_count_comments\" FROM \"public\".\"Post\" LEFT JOIN (SELECT \"public\".\"Comment\".\"postId\", COUNT(*) AS \"_aggr_count_comments\" FROM \"public\".\"Comment\" WHERE 1=1 GROUP BY \"public\".\"Comment\".\"postId\") AS \"aggr_selection_0_Comment\" ON (\"public\".\"Post\".\"id\" = \"aggr_selection_0_Comment\".\"postId\") WHERE 1=1 OFFSET $1",
        "",
    ),
    ("SELECT NOW()", ""),
    (
        "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3;",
        "",
    ),
    ("SET extra_float_digits = 3", ""),
    ("SET application_name = 'PostgreSQL JDBC Driver'", ""),
    ("SHOW TRANSACTION ISOLATION LEVEL", ""),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED", ""),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", ""),
    ("COMMIT AND CHAIN", ""),
    ("ROLLBACK", ""),
    ("ABORT", ""),
    ("END", ""),
    // A cursor is a portal; FETCH and MOVE run one, which may be a portal
    // the extended protocol bound to an INSERT … RETURNING.
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", "cursor c"),
    ("FETCH 100 FROM c", "fetch c"),
    ("MOVE FORWARD 5 IN c", "fetch c"),
    ("fetch all \"P\"", "fetch P"),
    ("FETCH NEXT FROM Mixed", "fetch mixed"),
    ("CLOSE ALL", ""),
    ("LISTEN ch", ""),
    ("UNLISTEN *", ""),
    ("VACUUM (FULL, VERBOSE) t", ""),
    ("ANALYZE t", ""),
    ("CHECKPOINT", ""),
    ("SELECT pg_advisory_lock(1)", ""),
    ("TABLE users", ""),
    ("VALUES (1, 'a'), (2, 'b')", ""),
    ("(SELECT 1) UNION (SELECT 2)", ""),
    ("SELECT 1 UNION SELECT 2 ORDER BY 1", ""),
    ("UPDATE t SET a = a + 1 FROM u WHERE t.id = u.id RETURNING t.*", ""),
    ("COMMENT ON TABLE t IS 'CREATE EXTENSION is mentioned here'", ""),
    ("REINDEX TABLE t", ""),
    ("CLUSTER t USING t_pkey", ""),
    // --- pg_dump output --------------------------------------------------
    ("SET statement_timeout = 0;", ""),
    ("SET client_encoding = 'UTF8';", ""),
    ("SET standard_conforming_strings = on;", ""),
    ("SELECT pg_catalog.set_config('search_path', '', false);", ""),
    ("SET check_function_bodies = false;", ""),
    ("SET default_table_access_method = heap;", ""),
    ("CREATE TABLE public.users (id integer NOT NULL, name text);", ""),
    ("ALTER TABLE public.users OWNER TO app;", ""),
    (
        "CREATE SEQUENCE public.users_id_seq AS integer START WITH 1 INCREMENT BY 1 NO MINVALUE NO MAXVALUE CACHE 1;",
        "",
    ),
    ("ALTER SEQUENCE public.users_id_seq OWNED BY public.users.id;", ""),
    (
        "ALTER TABLE ONLY public.users ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq'::regclass);",
        "",
    ),
    ("COPY public.users (id, name) FROM stdin;", "adds"),
    ("SELECT pg_catalog.setval('public.users_id_seq', 42, true);", ""),
    (
        "ALTER TABLE ONLY public.users ADD CONSTRAINT users_pkey PRIMARY KEY (id);",
        "",
    ),
    (
        "CREATE FUNCTION public.touch() RETURNS trigger\n    LANGUAGE plpgsql\n    AS $$\nBEGIN\n  NEW.updated_at = now();\n  RETURN NEW;\nEND;\n$$;",
        "CREATE FUNCTION",
    ),
    ("COMMENT ON EXTENSION plpgsql IS 'PL/pgSQL procedural language';", ""),
    ("CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;", "CREATE EXTENSION"),
    (
        "CREATE TRIGGER users_touch BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.touch();",
        "CREATE TRIGGER",
    ),
    (
        "--\n-- PostgreSQL database dump\n--\nSET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\nCREATE TABLE public.users (id integer NOT NULL);\nALTER TABLE public.users OWNER TO app;\nCREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $_$ BEGIN RETURN NEW; END $_$;\nCREATE TRIGGER t BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.touch();\nGRANT ALL ON SCHEMA public TO PUBLIC;\n",
        "CREATE FUNCTION, CREATE TRIGGER",
    ),
    // --- Texts that read differently with standard_conforming_strings off --
    ("SELECT '\\'' ; CREATE EXTENSION x; -- '", "CREATE EXTENSION"),
    ("SELECT '\\'; CREATE EXTENSION x; --'", "CREATE EXTENSION"),
    ("SELECT 'a\\'; INSERT INTO t VALUES (1); -- '", "adds"),
    ("INSERT INTO t VALUES ('C:\\dir\\')", "adds"),
    ("SELECT 'C:\\dir\\' FROM t", ""),
    // --- Empty and comment-only texts ------------------------------------
    ("", ""),
    ("   \n\t", ""),
    ("-- only a comment", ""),
    ("/* only */ /* comments */", ""),
    (";", ""),
    (" ; ;; ", ""),
    // --- Unparsable: leading keywords only --------------------------------
    ("SELEC 1", UNPARSED),
    ("CREATE EXTENSION", "CREATE EXTENSION, adds, remeasure, unparsed"),
    ("CREATE OR REPLACE FUNCTION f(", "CREATE FUNCTION, adds, remeasure, unparsed"),
    ("create trusted language", "CREATE LANGUAGE, adds, remeasure, unparsed"),
    ("CREATE CONSTRAINT TRIGGER", "CREATE TRIGGER, adds, remeasure, unparsed"),
    ("CREATE OR REPLACE RULE", "CREATE RULE, adds, remeasure, unparsed"),
    (
        "SELECT 1; CREATE EXTENSION hstore WITH WITH",
        "CREATE EXTENSION, adds, remeasure, unparsed",
    ),
    ("GRANT admin TO", "GRANT, adds, remeasure, unparsed"),
    ("REVOKE admin FROM", "REVOKE, adds, remeasure, unparsed"),
    ("GRANT SELECT ON TO bob", UNPARSED),
    ("CREATE USER MAPPING FOR", UNPARSED),
    ("CREATE USER", "CREATE USER, adds, remeasure, unparsed"),
    ("ALTER USER", "ALTER USER, adds, remeasure, unparsed"),
    ("DROP GROUP", "DROP GROUP, adds, remeasure, unparsed"),
    ("DO", "DO, adds, remeasure, unparsed"),
    ("/* c */ -- c\n CREATE EVENT TRIGGER", "CREATE EVENT TRIGGER, adds, remeasure, unparsed"),
    ("CREATE TABLE (", UNPARSED),
    ("SELECT 'unterminated", UNPARSED),
    ("SELECT \"unterminated", UNPARSED),
    ("SELECT $$ unterminated", UNPARSED),
    ("/* unterminated", UNPARSED),
    ("$$", UNPARSED),
    (")))((( ;;; @@@", UNPARSED),
    ("WITH x AS (INSERT", UNPARSED),
    // --- DO blocks, judged by what they run ---------------------------------
    // Postgrex.Notifications and Oban re-subscribe through DO.
    ("DO $$BEGIN LISTEN \"chan\"; END$$", ""),
    ("DO $$BEGIN LISTEN \"public.oban_insert\"; END$$", ""),
    ("do $$ begin listen chan; unlisten chan; notify chan, 'x'; end $$", ""),
    ("DO 'BEGIN LISTEN x; END'", ""),
    ("DO LANGUAGE plpgsql 'BEGIN UNLISTEN *; END'", ""),
    ("DO $b$BEGIN RAISE NOTICE '$pgtier0$ $$'; END$b$", ""),
    ("DO $a$BEGIN RAISE NOTICE '$pgtier0'; END$a$", ""),
    ("DO $$BEGIN SET client_encoding = 'UTF8'; SET ROLE NONE; END$$", ""),
    ("DO $$BEGIN PERFORM pg_notify('chan', 'x'); COMMIT; END$$", ""),
    ("DO $$DECLARE n int := 1; BEGIN IF n > 0 THEN NULL; END IF; END$$", ""),
    ("DO $$DECLARE r record; BEGIN FOR r IN SELECT 1 AS a LOOP NULL; END LOOP; END$$", ""),
    ("DO $$BEGIN INSERT INTO t VALUES (1); COMMIT; END$$", "adds, remeasure"),
    ("DO $$BEGIN UPDATE t SET a = 1; DELETE FROM t; END$$", ""),
    ("DO $$BEGIN CALL p(); END$$", "adds, remeasure"),
    ("DO $$BEGIN CREATE TABLE t2 AS SELECT 1; END$$", "adds, remeasure"),
    ("DO $$BEGIN TRUNCATE t; END$$", "remeasure"),
    ("DO $$BEGIN CREATE EXTENSION hstore; END$$", "CREATE EXTENSION"),
    ("DO $$BEGIN GRANT admin TO bob; END$$", "GRANT"),
    ("DO $$BEGIN CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'; END$$", "CREATE FUNCTION"),
    ("DO $$BEGIN DO $x$BEGIN LISTEN a; END$x$; END$$", ""),
    ("DO $$BEGIN DO $x$BEGIN INSERT INTO t VALUES (1); END$x$; END$$", "adds, remeasure"),
    // Dynamic SQL, other languages, what cannot be checked.
    ("DO $$BEGIN EXECUTE 'CREATE EXTENSION pgcrypto'; END$$", "DO with dynamic SQL (EXECUTE), adds, remeasure"),
    ("DO $$BEGIN EXECUTE 'LISTEN x'; END$$", "DO with dynamic SQL (EXECUTE), adds, remeasure"),
    (
        "DO $$DECLARE r record; BEGIN FOR r IN EXECUTE 'SELECT 1' LOOP END LOOP; END$$",
        "DO with dynamic SQL (EXECUTE), adds, remeasure",
    ),
    (
        "DO $$DECLARE c refcursor; BEGIN OPEN c FOR EXECUTE 'SELECT 1'; END$$",
        "DO with dynamic SQL (EXECUTE), adds, remeasure",
    ),
    (
        "DO $$BEGIN DO $x$BEGIN EXECUTE 'x'; END$x$; END$$",
        "DO with dynamic SQL (EXECUTE), adds, remeasure",
    ),
    ("DO LANGUAGE plpython3u $$plpy.execute('select 1')$$", "DO in a language other than plpgsql, adds, remeasure"),
    ("DO $$plpy.execute('select 1')$$ LANGUAGE plpython3u", "DO in a language other than plpgsql, adds, remeasure"),
    ("DO LANGUAGE 'PLPGSQL' $$BEGIN END$$", "DO in a language other than plpgsql, adds, remeasure"),
    ("DO LANGUAGE sql $$SELECT 1$$", "DO in a language other than plpgsql, adds, remeasure"),
    ("DO $$BEGIN PREPARE p AS INSERT INTO t VALUES (1); END$$", "PREPARE/EXECUTE/DEALLOCATE inside DO, adds, remeasure"),
    ("DO $$BEGIN DEALLOCATE ALL; END$$", "PREPARE/EXECUTE/DEALLOCATE inside DO, adds, remeasure"),
    ("DO $$BEGIN CREATE TABLE t2 AS EXECUTE p; END$$", "PREPARE/EXECUTE/DEALLOCATE inside DO, adds, remeasure"),
    ("DO $$BEGIN INSERT INTO t VALUES (1) END$$", "DO, adds, remeasure"),
    ("DO $$ #option dump\nBEGIN NULL; END $$", "DO, adds, remeasure"),
    ("DO $$ #OPTION /* c */ DUMP\nBEGIN NULL; END $$", "DO, adds, remeasure"),
    ("DO $$BEGIN PERFORM '\\''; CREATE EXTENSION x; -- '; END$$", "DO, adds, remeasure"),
    ("DO $$DECLARE r record := (SELECT lo_creat(-1)); BEGIN END$$", "DO, adds, remeasure"),
    // SQL in every PL/pgSQL expression is classified.
    ("DO $$BEGIN PERFORM lo_from_bytea(0, 'x'); END$$", "adds, remeasure"),
    ("DO $$DECLARE x oid; BEGIN x := lo_creat(-1); END$$", "adds, remeasure"),
    ("DO $$DECLARE x oid := lo_creat(-1); BEGIN END$$", "adds, remeasure"),
    ("DO $$BEGIN IF lo_creat(-1) > 0 THEN NULL; END IF; END$$", "adds, remeasure"),
    ("DO $$BEGIN WHILE lo_put(1, 0, 'x') IS NULL LOOP EXIT; END LOOP; END$$", "adds, remeasure"),
    ("DO $$BEGIN RAISE NOTICE '%', lo_from_bytea(0, 'x'); END$$", "adds, remeasure"),
    ("DO $$BEGIN RETURN; END$$", ""),
    (
        "DO $$DECLARE c refcursor := 'p'; x int; BEGIN FETCH c INTO x; END$$",
        "adds, remeasure",
    ),
    ("SELECT cursor_to_xml('p', 10, false, false, '')", "adds, remeasure"),
    (
        "DO $$DECLARE r record; BEGIN FOR r IN SELECT lo_creat(-1) LOOP END LOOP; END$$",
        "adds, remeasure",
    ),
    ("DO $$DECLARE i int; BEGIN FOR i IN 1..lo_creat(-1) LOOP END LOOP; END$$", "adds, remeasure"),
    ("DO $$DECLARE c CURSOR FOR SELECT lo_creat(-1); BEGIN OPEN c; END$$", "adds, remeasure"),
    ("DO $$BEGIN ASSERT lo_creat(-1) > 0; END$$", "adds, remeasure"),
    ("DO $$BEGIN CASE lo_creat(-1) WHEN 1 THEN NULL; ELSE NULL; END CASE; END$$", "adds, remeasure"),
    ("DO $$BEGIN EXIT WHEN lo_creat(-1) > 0; END$$", "DO, adds, remeasure"),
    (
        "DO $$BEGIN BEGIN NULL; EXCEPTION WHEN others THEN PERFORM lo_creat(-1); END; END$$",
        "adds, remeasure",
    ),
    // --- Large objects: every way to create or grow one adds rows ----------
    ("SELECT lo_from_bytea(0, 'x')", "adds, remeasure"),
    ("select LO_CREATE(0)", "adds, remeasure"),
    ("SELECT lo_creat(-1)", "adds, remeasure"),
    ("SELECT lo_import('/etc/hostname')", "adds, remeasure"),
    ("SELECT lo_import('/etc/hostname', 1234)", "adds, remeasure"),
    ("SELECT lowrite(lo_open(1, 131072), 'x')", "adds, remeasure"),
    ("SELECT lo_truncate(lo_open(1, 131072), 1000000)", "adds, remeasure"),
    ("SELECT lo_truncate64(lo_open(1, 131072), 1000000)", "adds, remeasure"),
    ("SELECT pg_catalog.lo_put(1, 0, 'x')", "adds, remeasure"),
    ("SELECT \"lo_put\"(1, 0, 'x')", "adds, remeasure"),
    ("SELECT pg_catalog.\"lo_put\"(1, 0, 'x')", "adds, remeasure"),
    ("SELECT U&\"lo\\005fput\"(1, 0, 'x')", "adds, remeasure"),
    ("SELECT u&\"\\006Co_put\"(1, 0, 'x')", "adds, remeasure"),
    ("SELECT U&\"lo!005fput\" UESCAPE '!' (1, 0, 'x')", "adds, remeasure"),
    ("SELECT U&\"lo\\+00005fput\"(1, 0, 'x')", "adds, remeasure"),
    ("SELECT * FROM lo_from_bytea(0, 'x')", "adds, remeasure"),
    ("SELECT 1 WHERE lo_creat(-1) > 0", "adds, remeasure"),
    ("SELECT 1 ORDER BY lo_creat(-1)", "adds, remeasure"),
    ("SELECT (SELECT lo_creat(-1))", "adds, remeasure"),
    ("VALUES (lo_creat(-1))", "adds, remeasure"),
    ("WITH x AS (SELECT lo_creat(-1)) SELECT * FROM x", "adds, remeasure"),
    ("INSERT INTO t VALUES (lo_creat(-1))", "adds, remeasure"),
    ("UPDATE t SET a = lo_from_bytea(0, 'x')", "adds, remeasure"),
    ("DELETE FROM t WHERE lo_put(a, 0, 'x') IS NULL", "adds, remeasure"),
    ("EXPLAIN ANALYZE SELECT lo_creat(-1)", "adds, remeasure"),
    ("COPY (SELECT lo_creat(-1)) TO STDOUT", "adds, remeasure"),
    ("CREATE TABLE t2 AS SELECT lo_creat(-1)", "adds, remeasure"),
    ("PREPARE p AS SELECT lo_creat(-1)", "prep p adds"),
    ("SELECT 1; SELECT lo_creat(-1)", "adds, remeasure"),
    ("SELECT query_to_xml('SELECT lo_creat(-1)', true, false, '')", "adds, remeasure"),
    ("SELECT * FROM ts_stat('SELECT to_tsvector(''x'')')", "adds, remeasure"),
    // Stored where a later statement runs it without naming it.
    ("CREATE TABLE t (a oid DEFAULT lo_creat(-1))", "a stored call to a large-object or SQL-running function, adds, remeasure"),
    (
        "CREATE TABLE t (a int CHECK (lo_put(1, 0, 'x') IS NULL))",
        "a stored call to a large-object or SQL-running function, adds, remeasure",
    ),
    ("CREATE INDEX i ON t ((lo_creat(a)))", "a stored call to a large-object or SQL-running function, adds, remeasure"),
    ("CREATE VIEW v AS SELECT lo_creat(-1)", "a stored call to a large-object or SQL-running function, adds, remeasure"),
    (
        "CREATE POLICY p ON t USING (lo_creat(-1) > 0)",
        "a stored call to a large-object or SQL-running function, adds, remeasure",
    ),
    (
        "CREATE OPERATOR ### (FUNCTION = lo_from_bytea, LEFTARG = oid, RIGHTARG = bytea)",
        "a stored call to a large-object or SQL-running function, adds, remeasure",
    ),
    (
        "DECLARE c CURSOR WITH HOLD FOR SELECT lo_creat(-1) FROM generate_series(1, 10)",
        "a stored call to a large-object or SQL-running function, adds, remeasure, cursor c adds",
    ),
    (
        "ALTER TABLE t ALTER COLUMN a SET DEFAULT lo_creat(-1)",
        "a stored call to a large-object or SQL-running function, adds, remeasure",
    ),
    // Readers, lookalikes and names that merely start alike stay plain.
    ("SELECT lo_get(1), lo_open(1, 262144), loread(0, 10), lo_unlink(1), lo_close(0)", ""),
    ("SELECT lo_export(1, '/tmp/x')", ""),
    ("SELECT location, login, lock_version, lo FROM users", ""),
    ("SELECT 'lo_put(1, 0, ''x'')'", ""),
    ("SELECT 1 -- lo_put(1, 0, 'x')\n", ""),
    ("SELECT $$lo_creat(-1)$$", ""),
    ("SELECT \"LO_PUT\"(1, 0, 'x')", "adds, remeasure"),
    ("SELECT U&\"d\\0061t\" FROM t", ""),
    // NUL ends a Query's text on the wire; here it is just unparsable.
    ("SELECT 1\0; CREATE EXTENSION x", "CREATE EXTENSION, adds, remeasure, unparsed"),
];

#[test]
fn corpus_is_large_enough() {
    assert!(CORPUS.len() >= 150, "only {} statements", CORPUS.len());
}

#[test]
fn corpus() {
    let mut failures = Vec::new();
    for (sql, spec) in CORPUS {
        let want = expect(spec);
        // Storage growth has its own corpus (`storage_growth`).
        let got = Classification {
            grows_storage: false,
            ..classify(sql)
        };
        if got != want {
            failures.push(format!("{sql:?}\n   want {want:?}\n   got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The fast path must never give a different verdict from the parser on
/// valid SQL: whenever it answers for a text the parser accepts, the answers
/// are the same.
#[test]
fn lexical_agrees_with_parser() {
    let mut failures = Vec::new();
    let mut decided = 0;
    for (sql, _) in CORPUS {
        let parsed = classify_parsed(sql);
        if parsed.unparsed {
            continue;
        }
        if let Some(lexical) = classify_lexical(sql) {
            decided += 1;
            if lexical != parsed {
                failures.push(format!(
                    "{sql:?}\n   lexical {lexical:?}\n   parser  {parsed:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        decided >= 80,
        "the fast path decided only {decided} statements"
    );
}

/// The statements applications send all day never reach the parser.
#[test]
fn fast_path_decides_common_statements() {
    let common = [
        "SELECT 1",
        "select * from users where id = $1",
        "SELECT s0.\"id\" FROM \"users\" AS s0 WHERE (s0.\"id\" = $1)",
        "INSERT INTO \"users\" (\"email\") VALUES ($1) RETURNING \"id\"",
        "UPDATE users SET name = $1 WHERE id = $2",
        "DELETE FROM users WHERE id = $1",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT s1",
        "RELEASE SAVEPOINT s1",
        "SET search_path = public",
        "SHOW server_version",
        "DISCARD ALL",
        "WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r",
        "COPY t FROM STDIN",
        "COPY t TO STDOUT",
        "EXPLAIN SELECT 1",
        "TRUNCATE t",
        "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
        "VACUUM ANALYZE t",
        "SELECT 'C:\\path'",
        "SELECT location, login, lock_version, \"lo\" FROM users WHERE lo_get(id) IS NULL",
        "INSERT INTO t VALUES ('C:\\dir\\')",
        "",
        "-- nothing",
    ];
    for sql in common {
        assert!(
            classify_lexical(sql).is_some(),
            "fast path undecided: {sql:?}"
        );
    }
    let needs_parser = [
        "SELECT 1 INTO t",
        "WITH x AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT 1",
        "INSERT INTO a WITH x AS (INSERT INTO b VALUES (1) RETURNING 1) SELECT 1",
        "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
        "COPY (SELECT 1) TO STDOUT",
        "CREATE EXTENSION hstore",
        "SELECT 1; CREATE EXTENSION hstore",
        "(SELECT 1)",
        "PREPARE p AS SELECT 1",
        "SELECT '\\'' ; CREATE EXTENSION x; -- '",
        "SELECT 'unterminated",
        "SELECT lo_put(1, 0, 'x')",
        "SELECT \"lo_from_bytea\"(0, 'x')",
        "SELECT LoWrite(0, 'x')",
        "SELECT U&\"d\\0061t\" FROM t",
        "SELECT 1 FROM t WHERE query_to_xml('x', true, true, '') IS NULL",
    ];
    for sql in needs_parser {
        assert_eq!(classify_lexical(sql), None, "fast path decided {sql:?}");
    }
}

#[test]
fn shared_classifier_matches_and_caches() {
    let classifier = Classifier::new();
    for round in 0..2 {
        for (sql, _) in CORPUS {
            assert_eq!(
                *classifier.classify(sql),
                classify(sql),
                "round {round}: {sql:?}"
            );
        }
    }
    // Only parser verdicts are cached, and each text once.
    let parsed = CORPUS
        .iter()
        .map(|(sql, _)| *sql)
        .filter(|sql| classify_lexical(sql).is_none())
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(classifier.cached_entries(), parsed);
    assert!(classifier.cached_bytes() > 0);
}

#[test]
fn shared_classifier_across_threads() {
    let classifier = Arc::new(Classifier::default());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let classifier = Arc::clone(&classifier);
            std::thread::spawn(move || {
                for i in 0..CORPUS.len() {
                    let (sql, _) = CORPUS[(i * 7 + t * 13) % CORPUS.len()];
                    assert_eq!(*classifier.classify(sql), classify(sql), "{sql:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a classifier thread panicked");
    }
}

#[test]
fn cache_is_bounded_in_entries() {
    let classifier = Classifier::new();
    for i in 0..(CACHE_MAX_ENTRIES + 3000) {
        classifier.classify(&format!("CREATE TABLE t{i} (a int)"));
    }
    let entries = classifier.cached_entries();
    assert!(entries <= CACHE_MAX_ENTRIES, "{entries} entries");
    assert!(
        entries >= CACHE_MAX_ENTRIES / 2,
        "only {entries} entries kept"
    );
}

#[test]
fn cache_is_bounded_in_bytes() {
    let classifier = Classifier::new();
    // CREATE TABLE grows storage and nothing else.
    let created = Classification {
        grows_storage: true,
        ..Classification::default()
    };
    let filler = "x".repeat(CACHE_MAX_STATEMENT - 100);
    for i in 0..200 {
        let sql = format!("CREATE TABLE t{i} (a text DEFAULT '{filler}')");
        assert!(sql.len() <= CACHE_MAX_STATEMENT);
        assert_eq!(*classifier.classify(&sql), created);
    }
    let bytes = classifier.cached_bytes();
    assert!(bytes <= CACHE_MAX_BYTES, "{bytes} bytes");
    // Too long to cache, but still classified.
    let long = format!(
        "CREATE TABLE big (a text DEFAULT '{}')",
        "y".repeat(CACHE_MAX_STATEMENT)
    );
    let before = classifier.cached_entries();
    assert_eq!(*classifier.classify(&long), created);
    assert_eq!(*classifier.classify(&long), created);
    assert!(classifier.cached_entries() <= before);
}

#[test]
fn cache_keeps_statements_in_use() {
    let classifier = Classifier::new();
    let hot = "WITH x AS (INSERT INTO hot VALUES (1) RETURNING 1) SELECT * FROM x";
    classifier.classify(hot);
    for i in 0..20_000 {
        if i % 50 == 0 {
            classifier.classify(hot);
        }
        classifier.classify(&format!("CREATE TABLE once{i} (a int)"));
    }
    assert!(
        classifier.is_cached(hot),
        "a statement hit every 50 calls was evicted"
    );
    assert!(!classifier.is_cached("CREATE TABLE once0 (a int)"));
}

#[test]
fn deny_kinds() {
    for kind in DenyKind::ALL {
        assert_eq!(DenyKind::parse(kind.as_str()), Some(kind));
    }
    assert_eq!(DenyKind::parse("Function"), Some(DenyKind::Function));
    assert_eq!(DenyKind::parse("functions"), None);
    assert_eq!(DenyKind::parse(""), None);
    let names: Vec<_> = DenyKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names, ["extension", "function", "trigger", "role"]);
    // Every feature's name reads in a sentence ("… is not available on the
    // free tier") and has no comma (the expectations above are comma lists).
    for f in all_features() {
        assert!(
            !f.name.is_empty()
                && f.name.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                && !f.name.contains(','),
            "{f:?}"
        );
    }
}

#[test]
fn is_plain() {
    assert!(classify("SELECT 1").is_plain());
    assert!(classify("").is_plain());
    for sql in [
        "INSERT INTO t VALUES (1)",
        "TRUNCATE t",
        "CREATE EXTENSION x",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "DEALLOCATE p",
        "DISCARD ALL",
        "SELEC 1",
    ] {
        assert!(!classify(sql).is_plain(), "{sql:?}");
    }
}

#[test]
fn long_identifiers_are_truncated_like_postgresql() {
    let name = "a".repeat(70);
    let got = classify(&format!("PREPARE {name} AS SELECT 1; EXECUTE {name}"));
    assert_eq!(got.prepares, vec![("a".repeat(63), Writes::NONE)]);
    assert_eq!(got.executes, vec!["a".repeat(63)]);
}

#[test]
fn huge_texts() {
    // A 20 KB ORM-style SELECT.
    let columns: Vec<String> = (0..1400).map(|i| format!("t.\"column_{i}\"")).collect();
    let select = format!(
        "SELECT {} FROM \"t\" AS t WHERE t.id = $1",
        columns.join(", ")
    );
    assert!(select.len() > 20_000);
    assert_eq!(classify_lexical(&select), Some(Classification::default()));
    assert_eq!(classify_parsed(&select), Classification::default());

    // A 1 MB multi-row INSERT.
    let mut insert = String::from("INSERT INTO \"events\" (\"id\", \"name\", \"payload\") VALUES ");
    let mut i = 0;
    while insert.len() < 1 << 20 {
        if i > 0 {
            insert.push_str(", ");
        }
        insert.push_str(&format!(
            "({i}, 'event {i}', '{{\"k\": \"it''s; CREATE ROLE x\"}}')"
        ));
        i += 1;
    }
    let adds = expect("adds");
    assert_eq!(classify_lexical(&insert), Some(adds.clone()));
    assert_eq!(classify(&insert), adds);
    assert_eq!(classify_parsed(&insert), adds);

    // A 1 MB data-modifying CTE goes to the parser and is not cached.
    let cte = format!("WITH x AS ({insert} RETURNING 1) SELECT count(*) FROM x");
    let classifier = Classifier::new();
    assert_eq!(*classifier.classify(&cte), expect("adds, remeasure"));
    assert_eq!(classifier.cached_entries(), 0);
}

#[test]
fn deep_nesting_never_overflows() {
    // Deep parentheses: no tree depth (the grammar drops them).
    let parens = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert_eq!(classify(&parens), Classification::default());
    let _ = classify_parsed(&parens);
    // Deep expression trees: too deep for the decoder, so conservatively
    // unparsed; features still come from the leading keywords.
    let chain = vec!["a"; 5000].join(" || ");
    let deep = format!("WITH x AS (INSERT INTO t SELECT {chain} RETURNING 1) SELECT 1");
    assert_eq!(classify(&deep), expect(UNPARSED));
    let deep_function = format!("CREATE FUNCTION f() RETURNS text RETURN {chain}");
    assert_eq!(
        classify(&deep_function),
        expect("CREATE FUNCTION, adds, remeasure, unparsed")
    );
    let subqueries = format!(
        "WITH x AS (SELECT 1) SELECT {}1{}",
        "(SELECT ".repeat(3000),
        ")".repeat(3000)
    );
    let _ = classify(&subqueries);
}

/// A small deterministic generator, so the random tests repeat exactly.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces that exercise every lexer state and the keyword rules.
const FRAGMENTS: &[&str] = &[
    "SELECT ",
    "select ",
    "1",
    " ",
    "\n",
    "'",
    "''",
    "\"",
    "\"\"",
    "$$",
    "$a$",
    "$1",
    "$",
    "E'",
    "e'",
    "U&'",
    "U&\"",
    "N'",
    "B'",
    "X'",
    "\\",
    "\\'",
    "--",
    "/*",
    "*/",
    ";",
    "(",
    ")",
    "INTO ",
    "into ",
    "INSERT INTO t VALUES (1)",
    "MERGE ",
    "WITH x AS (",
    "COPY t FROM STDIN",
    "COPY (",
    " TO STDOUT",
    "CREATE EXTENSION hstore",
    "CREATE OR REPLACE FUNCTION ",
    "DO $$ $$",
    "EXPLAIN ",
    "ANALYZE ",
    "PREPARE p AS ",
    "EXECUTE p",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "GRANT a TO b",
    " ON ",
    "ALTER USER u",
    "DROP ROLE r",
    "TRUNCATE t",
    "CALL p()",
    "UPDATE t SET a = 1",
    "DELETE FROM t",
    "BEGIN",
    "COMMIT",
    "SET x = 1",
    "VALUES (1)",
    "TABLE t",
    " t ",
    ", ",
    "x",
    "é",
    "\u{a0}",
    "\0",
    "*",
    "+",
    "-",
    "/",
    ".",
    "1e5",
    "0x1F",
    "::",
    "RETURNING *",
    "lo_put(1, 0, 'x')",
    "U&\"lo\\005fput\"",
    " UESCAPE '!'",
    "DO $$BEGIN LISTEN x; END$$",
    "DO $$BEGIN EXECUTE 'x'; END$$",
    "login",
];

fn random_text(rng: &mut XorShift) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(12) {
        if rng.below(8) == 0 {
            // Arbitrary characters, any code point.
            for _ in 0..rng.below(6) {
                if let Some(c) = char::from_u32(rng.next() as u32 % 0x11_0000) {
                    s.push(c);
                }
            }
        } else {
            s.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]);
        }
    }
    s
}

#[test]
fn random_texts_never_panic_and_paths_agree() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let classifier = Classifier::new();
    let mut disagreements = Vec::new();
    // CLASSIFY_FUZZ_ITERATIONS=1000000 for a longer hunt.
    let iterations = std::env::var("CLASSIFY_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000);
    let valid: Vec<&str> = CORPUS
        .iter()
        .map(|(sql, _)| *sql)
        .filter(|sql| !classify_parsed(sql).unparsed)
        .collect();
    let mut compared = 0;
    for i in 0..iterations {
        // Half random fragments, half valid statements glued together.
        let sql = if i % 2 == 0 {
            random_text(&mut rng)
        } else {
            valid_combination(&mut rng, &valid)
        };
        let full = classify(&sql);
        assert_eq!(*classifier.classify(&sql), full, "{sql:?}");
        let parsed = classify_parsed(&sql);
        if let Some(lexical) = classify_lexical(&sql) {
            if !parsed.unparsed {
                compared += 1;
            }
            if !parsed.unparsed && lexical != parsed {
                disagreements.push(format!(
                    "{sql:?}\n   lexical {lexical:?}\n   parser  {parsed:?}"
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    assert!(
        compared >= iterations / 10,
        "only {compared} decided valid texts compared"
    );
}

/// One to three valid statements of the corpus, with comments and
/// whitespace between them and, at random, in another letter case.
fn valid_combination(rng: &mut XorShift, valid: &[&str]) -> String {
    const GLUE: &[&str] = &[";", "; ", ";\n", " ;\n-- c\n", "; /* c */ ", ";\t"];
    const LEAD: &[&str] = &["", " ", "\n", "-- c\n", "/* c /* nested */ */", "\t "];
    let mut s = String::from(LEAD[rng.below(LEAD.len())]);
    for i in 0..=rng.below(3) {
        if i > 0 {
            s.push_str(GLUE[rng.below(GLUE.len())]);
        }
        let statement = valid[rng.below(valid.len())].trim_end_matches(';');
        match rng.below(4) {
            0 => s.push_str(&statement.to_ascii_lowercase()),
            1 => s.push_str(&statement.to_ascii_uppercase()),
            _ => s.push_str(statement),
        }
    }
    if rng.below(2) == 0 {
        s.push(';');
    }
    s
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift(42);
    for len in [0usize, 1, 2, 3, 7, 64, 300, 4096] {
        for _ in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let text = String::from_utf8_lossy(&bytes);
            let _ = classify(&text);
            let _ = classify_lexical(&text);
            // Printable ASCII only: more likely to reach deep lexer states.
            let ascii: String = bytes.iter().map(|b| (b % 95 + 32) as char).collect();
            let _ = classify(&ascii);
        }
    }
}

/// DO blocks nested deeper than the bound are refused, whatever they hold.
#[test]
fn do_nesting_is_bounded() {
    fn nested(levels: usize, inner: &str) -> String {
        let mut sql = inner.to_string();
        for i in 0..levels {
            sql = format!("DO $d{i}$BEGIN {sql}; END$d{i}$");
        }
        sql
    }
    assert_eq!(classify(&nested(4, "LISTEN x")), expect(""));
    assert_eq!(
        classify(&nested(5, "LISTEN x")),
        expect("DO, adds, remeasure")
    );
    assert_eq!(
        classify(&nested(12, "LISTEN x")),
        expect("DO, adds, remeasure")
    );
    assert_eq!(
        classify(&nested(3, "INSERT INTO t VALUES (1)")),
        expect("adds, remeasure")
    );
}

/// DO verdicts are parser verdicts: cached like any other.
#[test]
fn do_verdicts_are_cached() {
    let classifier = Classifier::new();
    let listen = "DO $$BEGIN LISTEN \"chan\"; END$$";
    assert!(classifier.classify(listen).is_plain());
    assert!(classifier.is_cached(listen));
    assert!(classifier.classify(listen).is_plain());
}

/// A body holding every kind of quote and dollar sign is read back as
/// PostgreSQL reads it (the re-quoting cannot be escaped).
#[test]
fn do_bodies_are_requoted_safely() {
    for body in [
        "BEGIN RAISE NOTICE '$pgtier0$'; END",
        "BEGIN RAISE NOTICE '$pgtier0$ $pgtier1$ $pgtier2$'; END",
        "BEGIN RAISE NOTICE 'it''s \"quoted\"'; END",
        "BEGIN RAISE NOTICE $q$ $$ $q$; END",
    ] {
        let sql = format!("DO $body${body}$body$");
        assert_eq!(classify(&sql), expect(""), "{sql}");
    }
    // A body ending where the closing tag would start.
    let tricky = "DO $b$BEGIN NULL; END --$pgtier0$b$";
    assert_eq!(classify(tricky), expect(""));
    // An escape attempt: the body closes the re-quoting and appends SQL.
    let escape = "DO $b$BEGIN NULL; END$pgtier0$; CREATE EXTENSION x; --$b$";
    assert_ne!(classify(escape), expect(""));
}

/// What a body costs is bounded: too many expressions are refused, many
/// record variables are checked in one pass.
#[test]
fn do_bodies_are_bounded_in_work() {
    let many = format!("DO $$BEGIN {} END$$", "PERFORM 1; ".repeat(10_001));
    assert_eq!(classify(&many), expect("DO, adds, remeasure"));
    let fine = format!("DO $$BEGIN {} END$$", "PERFORM 1; ".repeat(500));
    assert_eq!(classify(&fine), expect(""));
    let records: Vec<String> = (0..2000).map(|i| format!("r{i} record;")).collect();
    let declared = format!("DO $$DECLARE {} BEGIN NULL; END$$", records.join(" "));
    assert_eq!(classify(&declared), expect(""));
    let with_default = format!(
        "DO $$DECLARE {} r2000 record := (SELECT 1); BEGIN NULL; END$$",
        records.join(" ")
    );
    assert_eq!(classify(&with_default), expect("DO, adds, remeasure"));
}
