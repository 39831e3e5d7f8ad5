//! The startup-phase decoder: the first bytes any client on the internet
//! may send. A packet is a length (checked first, before anything is
//! allocated) and a body; whatever the body, decoding ends in a packet or an
//! error, and what it accepts is what PostgreSQL accepts, read as
//! PostgreSQL reads it: no parameter twice, `database` and `user` cut to 63
//! bytes (and forwarded so).
#![no_main]

#[path = "../checks/startup.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
