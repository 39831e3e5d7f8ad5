#!/usr/bin/env bash
# Runs pgtier's fuzz targets (fuzz/, cargo-fuzz + libFuzzer) one after
# another: builds them once with the nightly toolchain, then runs each
# target's binary for FUZZ_SECONDS (default 600) on its corpus
# (fuzz/corpus/<target>, git-ignored, grows across runs) and its committed
# seeds (fuzz/seeds/<target>). Crashes land in fuzz/artifacts/<target>/ and
# stop the run with libFuzzer's exit code.
#
#   scripts/fuzz.sh                       # every target, 10 minutes each
#   FUZZ_SECONDS=30 scripts/fuzz.sh startup sasl
#
# One target at a time on purpose: each libFuzzer process keeps one core
# busy. Needs `rustup toolchain install nightly` and `cargo install
# cargo-fuzz`; the main build stays on stable.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-600}
all=(startup frames_from_client frames_from_cluster classify sasl scram)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

cargo +nightly fuzz build -O
bin=target/x86_64-unknown-linux-gnu/release
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target" "seeds/$target"
    echo "==> fuzzing $target for ${seconds}s"
    ASAN_OPTIONS=detect_odr_violation=0 "$bin/$target" \
        -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" \
        "corpus/$target" "seeds/$target"
done
