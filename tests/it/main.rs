//! The integration suite: one test binary, so the shared helpers compile
//! once, the whole suite links once, and one throwaway cluster (started on
//! first use, `common::cluster`) serves every test of a run.
//!
//! Modules are named by behaviour. `scripts/test.sh` runs the binary once
//! per PostgreSQL major and once in proxy authentication mode, and skips
//! in the later runs the modules whose outcome cannot depend on them (see
//! `ONCE` there).

mod common;
mod harden;
mod walks;

mod admin;
mod cancel;
mod cli;
mod clients;
mod encodings;
mod escapes;
mod faults;
mod fleet;
mod floods;
mod fuzz_seeds;
mod identity;
mod idle;
mod integrity;
mod leaks;
mod logs;
mod matrix;
mod noisy;
mod package;
mod properties;
mod proxy;
mod proxy_auth;
mod quota;
mod readme;
mod registry;
mod sandbox;
mod storage;
mod suspend;
mod threads;
mod tls;
mod wire;
