#!/usr/bin/env bash
# Delivered events/s per sink (HTTP, Redis Streams, NATS JetStream, RabbitMQ), 1 KiB bodies,
# in one run, against private brokers. Prints a Markdown table (see docs/PERFORMANCE-sinks.md).
#   scripts/bench-sinks.sh            # release build; N=3000 events per sink
#   HOOKGATE_BENCH_N=5000 PROFILE=debug scripts/bench-sinks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
flag=(); [[ $profile == release ]] && flag=(--release)
cargo build -q "${flag[@]}" --bin hookgate --example bench_sinks
started_rmq=0
if [[ -z "${HOOKGATE_TEST_AMQP_URL:-}" ]]; then
  eval "$(scripts/rabbitmq.sh start)"
  started_rmq=1
fi
trap '[[ $started_rmq == 1 ]] && scripts/rabbitmq.sh stop' EXIT
HOOKGATE_BIN="target/$profile/hookgate" "target/$profile/examples/bench_sinks"
