//! Fast-path function calls (the FunctionCall message): which built-in
//! functions are known to add no rows.
//!
//! libpq's large-object API (`lo_creat`, `lo_write`, `lo_import`, …) and
//! any `PQfn` call reach the cluster as a FunctionCall naming a function
//! by OID, not as SQL. While a tenant is over its row limit, a call is let
//! through only when its function is known to add nothing; everything
//! else, including any OID not listed here, is refused (fail closed).

/// Built-in functions (their OIDs are fixed in PostgreSQL's catalog, the
/// same in 15, 17 and 18) that read or remove large objects but never
/// create or grow one.
const ADDS_NOTHING: &[(u32, &str)] = &[
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
];

/// Whether a FunctionCall of `oid` may add rows (or grow a large object).
pub fn function_call_adds_rows(oid: u32) -> bool {
    !ADDS_NOTHING.iter().any(|(known, _)| *known == oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_readers_add_nothing() {
        assert!(!function_call_adds_rows(954), "loread");
        assert!(!function_call_adds_rows(964), "lo_unlink");
        assert!(function_call_adds_rows(955), "lowrite");
        assert!(function_call_adds_rows(957), "lo_creat");
        assert!(function_call_adds_rows(715), "lo_create");
        assert!(function_call_adds_rows(0), "an unknown OID");
    }
}
