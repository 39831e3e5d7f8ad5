//! The statement classifier on any text a client can send: the Query
//! string as UTF-8 when it is, and lossily decoded as well (the proxy
//! classifies what it can read). It must never panic, must give the same
//! answer every time and through the cache, and a lexical verdict must be
//! the verdict.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgtier::quota::classify::{classify, classify_lexical, Classifier};

fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(Classifier::new)
}

fn check(sql: &str) {
    let first = classify(sql);
    assert_eq!(first, classify(sql), "deterministic");
    assert_eq!(*classifier().classify(sql), first, "the cache agrees");
    assert_eq!(*classifier().classify(sql), first, "a cache hit agrees");
    if let Some(lexical) = classify_lexical(sql) {
        assert_eq!(lexical, first, "the fast path's verdict is the verdict");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&String::from_utf8_lossy(data));
});
