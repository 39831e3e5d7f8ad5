//! The FunctionCall ('F') message: libpq's large-object client API
//! (`lo_creat`, `lo_write`, `lo_import` on the client side…) calls built-in
//! functions by OID, with no SQL text to classify. Which of those calls can
//! add rows is decided here, by OID, failing closed: only the built-ins known
//! to add nothing are let through while a tenant is over its row limit.

/// Built-in functions (pg_proc OIDs) that read, move in, close or delete a
/// large object, and add no rows. The same OIDs in PostgreSQL 15, 17 and 18
/// (checked against each version's `postgres.bki`, generated from
/// `src/include/catalog/pg_proc.dat`).
const ADDS_NOTHING: [(u32, &str); 10] = [
    (952, "lo_open"),
    (953, "lo_close"),
    (954, "loread"),
    (956, "lo_lseek"),
    (958, "lo_tell"),
    (964, "lo_unlink"),
    (3170, "lo_lseek64"),
    (3171, "lo_tell64"),
    (3458, "lo_get(oid)"),
    (3459, "lo_get(oid, bigint, integer)"),
];

/// Whether a FunctionCall of the function with this OID may add rows: false
/// only for the built-ins known to add none, true for every other OID
/// (`lo_creat`, `lo_create`, `lowrite`, `lo_import`, `lo_put`,
/// `lo_from_bytea`, `lo_truncate`, and any function the proxy knows nothing
/// of).
pub fn function_call_adds_rows(oid: u32) -> bool {
    !ADDS_NOTHING.iter().any(|&(known, _)| known == oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_readers_add_nothing() {
        for (oid, name) in [
            (952, "lo_open"),
            (953, "lo_close"),
            (954, "loread"),
            (956, "lo_lseek"),
            (958, "lo_tell"),
            (964, "lo_unlink"),
            (3170, "lo_lseek64"),
            (3171, "lo_tell64"),
            (3458, "lo_get"),
            (3459, "lo_get"),
        ] {
            assert!(!function_call_adds_rows(oid), "{name} ({oid})");
        }
        // The writers, as PostgreSQL 15, 17 and 18 number them.
        for (oid, name) in [
            (715, "lo_create"),
            (957, "lo_creat"),
            (955, "lowrite"),
            (764, "lo_import"),
            (767, "lo_import(text, oid)"),
            (1004, "lo_truncate"),
            (3172, "lo_truncate64"),
            (3457, "lo_from_bytea"),
            (3460, "lo_put"),
        ] {
            assert!(function_call_adds_rows(oid), "{name} ({oid})");
        }
        // Anything unknown fails closed.
        for oid in [0, 1, 765, 16384, u32::MAX] {
            assert!(function_call_adds_rows(oid), "{oid}");
        }
    }
}
