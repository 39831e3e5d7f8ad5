//! The fuzz targets' checks on their seeds, in the normal suite: the fuzz
//! crate builds only with a nightly toolchain and runs only when someone
//! fuzzes, so without this its checks could stop compiling, or stop
//! holding on the seeds, unnoticed. Each check is the target's own code
//! (`fuzz/checks/`, shared with `fuzz/fuzz_targets/`); besides the seeds
//! each gets a fixed set of pseudo-random inputs (the same every run).

#[path = "../../fuzz/checks/classify.rs"]
mod classify;
#[path = "../../fuzz/checks/frames_from_client.rs"]
mod frames_from_client;
#[path = "../../fuzz/checks/frames_from_cluster.rs"]
mod frames_from_cluster;
#[path = "../../fuzz/checks/sasl.rs"]
mod sasl;
#[path = "../../fuzz/checks/scram.rs"]
mod scram;
#[path = "../../fuzz/checks/startup.rs"]
mod startup;

use std::path::Path;

/// Pseudo-random inputs of up to `max_len` bytes (xorshift, fixed seed).
fn generated(count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let len = (next() as usize) % (max_len + 1);
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

/// Runs `check` on every seed of `target` (at least `min_seeds` of them
/// must exist, so a renamed folder cannot turn this into nothing) and on
/// the generated inputs.
fn replay(target: &str, min_seeds: usize, generated_inputs: usize, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries {
            let path = entry.expect("a seed directory entry").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            check(&bytes);
            seeds += 1;
        }
    }
    assert!(
        seeds >= min_seeds,
        "{} seeds in {}, expected at least {min_seeds}",
        seeds,
        dir.display()
    );
    for input in generated(generated_inputs, 512) {
        check(&input);
    }
}

#[test]
fn startup_seeds_hold() {
    replay("startup", 7, 2_000, startup::run);
}

#[test]
fn classify_seeds_hold() {
    replay("classify", 6, 300, classify::run);
}

#[test]
fn frames_from_client_seeds_hold() {
    replay("frames_from_client", 1, 2_000, frames_from_client::run);
}

#[test]
fn frames_from_cluster_seeds_hold() {
    replay("frames_from_cluster", 1, 2_000, frames_from_cluster::run);
}

#[test]
fn sasl_seeds_hold() {
    replay("sasl", 7, 200, sasl::run);
}

#[test]
fn scram_inputs_hold() {
    // No seeds kept for this target: generated inputs only.
    replay("scram", 0, 300, scram::run);
}
