//! The login relay (`pgtier::login::relay`), where the proxy reads the
//! cluster's authentication messages: AuthenticationSASL's mechanism list
//! (rewritten without SCRAM-SHA-256-PLUS), SASLContinue/SASLFinal and the
//! client's SASL answers passed through, NegotiateProtocolVersion, and
//! BackendKeyData (replaced by the proxy's own key). The cluster's bytes and
//! the client's are the fuzzer's; the relay runs over real socket pairs.
//!
//! Whatever they say, the relay ends (no hang), never panics, holds a slot
//! exactly when it logged in and gives it and the cancel key back when the
//! session is dropped, never shows the client a `-PLUS` mechanism, and never
//! hands the client the cluster's own cancel secret.
//!
//! The private SASL parsing itself is in `src/login/mod.rs`; this reaches it the
//! way the cluster does.
#![no_main]

#[path = "../checks/sasl.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
