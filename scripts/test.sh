#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing, starts the private
# brokers the tests need (on free ports, never the default ones), runs every test, and stops
# what it started. Tests start their own redis-server / nats-server instances per test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

scripts/deps.sh
if [ -x scripts/sdk-setup.sh ]; then scripts/sdk-setup.sh; fi

if [ -x scripts/rabbitmq.sh ]; then
  # Prints `export HOOKGATE_TEST_AMQP_URL=…` for a private node; stopped on exit.
  eval "$(scripts/rabbitmq.sh start)"
  trap 'scripts/rabbitmq.sh stop >/dev/null 2>&1 || true' EXIT
fi

cargo test --locked "$@"
