//! The statement classifier on any text a client can send: the Query
//! string as UTF-8 when it is, and lossily decoded as well (the proxy
//! classifies what it can read). It must never panic, must give the same
//! answer every time and through the cache, and a lexical verdict must be
//! the verdict.
#![no_main]

#[path = "../checks/classify.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
