#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 10), one after the other,
# and print the executions per target. Exit 1 if any target crashed (the
# input is saved in fuzz/artifacts/TARGET/).
#
# Engine: the stable fallback runner (fuzz/src/bin/runner.rs), which feeds
# random and mutated seed inputs to the same functions the libFuzzer targets
# (fuzz/fuzz_targets/) call. With cargo-fuzz installed, coverage-guided runs
# are: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none \
#        --features libfuzzer TARGET -- -max_total_time=SECONDS
#
# Usage: scripts/fuzz.sh [SECONDS] [SEED]
set -euo pipefail
secs="${1:-10}"
seed="${2:-$(date +%s)}"
cd "$(dirname "$0")/../fuzz"
cargo build --release --bin fuzz-runner --quiet
runner="${CARGO_TARGET_DIR:-target}/release/fuzz-runner"
status=0
for t in pop3_command pop3_session smtp_session smtp_data sasl body_roundtrip \
         maildir_name maildir_index config pop3_client; do
    "$runner" "$t" "$secs" "$seed" | grep -v '^seed=' || status=1
done
echo "seed=$seed"
exit "$status"
