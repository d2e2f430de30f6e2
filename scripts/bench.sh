#!/usr/bin/env bash
# The accept-path benchmark (issue 2), in one command: builds the release gateway and the
# benchmark, runs it (about 2 minutes), prints the Markdown table.
#
#   scripts/bench.sh                      full run (16, 64, 256 connections); writes the
#                                         results into docs/PERFORMANCE.md
#   scripts/bench.sh --levels 64 ...      any hookgate-bench options (see --help); prints only,
#                                         unless --out FILE is given
#
# Needs taskset (util-linux) and 2+ CPUs; perf only for --perf-record.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin hookgate
cargo build --release --manifest-path bench/Cargo.toml

export HOOKGATE_BENCH_CMD="scripts/bench.sh${*:+ $*}"
if [ $# -eq 0 ]; then
    set -- --out docs/PERFORMANCE.md
fi
exec bench/target/release/hookgate-bench --hookgate target/release/hookgate "$@"
