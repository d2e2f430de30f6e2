#!/usr/bin/env bash
# A private RabbitMQ node for tests: never the default instance on 5672.
#
#   eval "$(scripts/rabbitmq.sh start)"   # starts a node on a free port, waits until it is up,
#                                         # prints `export HOOKGATE_TEST_AMQP_URL=amqp://…`,
#                                         # `export HOOKGATE_TEST_AMQPS_URL=amqps://…` (a TLS
#                                         # listener, certificate from a CA made for this node),
#                                         # `export HOOKGATE_TEST_AMQPS_CA=…/ca.pem` and
#                                         # `export HOOKGATE_TEST_RABBITMQ_DIR=…` on stdout
#   scripts/rabbitmq.sh stop              # stops the node named by $HOOKGATE_TEST_RABBITMQ_DIR
#                                         # (or the dir given as $2) and removes its dir
#
# Progress and errors go to stderr; exit status 1 if the node does not come up within 60 s
# (its log is printed). Needs rabbitmq-server, rabbitmqctl and openssl on PATH.
set -euo pipefail

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A CA and a certificate for localhost and 127.0.0.1 signed by it, for the TLS listener.
make_tls() {
  local d=$1
  {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=hookgate test RabbitMQ CA" -keyout "$d/ca.key" -out "$d/ca.pem"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
      -keyout "$d/server.key" -out "$d/server.csr"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
      -days 2 -extfile "$d/server.ext" -out "$d/server.pem"
  } >/dev/null 2>&1 || { echo "rabbitmq.sh: openssl failed to make the TLS certificate" >&2; return 1; }
}

start() {
  local port tls_port dist dir node
  port=$(free_port)
  tls_port=$(free_port)
  dist=$(free_port)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/hookgate-rabbitmq.XXXXXX")
  node="hookgate-test-${port}@localhost"
  : >"$dir/enabled_plugins"
  make_tls "$dir"
  cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:${port}
listeners.ssl.default = 127.0.0.1:${tls_port}
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
# Small enough that a test can pass it (tests/sinks.rs), far above what other tests send.
max_message_size = 524288
CONF
  printf '%s\n' "$node" >"$dir/node"
  # As root, the Debian wrapper drops to the rabbitmq user: that user must own the dir.
  if [[ $(id -u) == 0 ]] && id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq "$dir"; fi
  (
    export RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$port" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_DIST_PORT="$dist" RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONFIG_FILE="$dir/rabbitmq" \
      RABBITMQ_PID_FILE="$dir/pid" ERL_CRASH_DUMP="$dir/erl_crash.dump" RABBITMQ_SERVER_START_ARGS="-kernel inet_dist_listen_min $dist inet_dist_listen_max $dist"
    cd "$dir"
    nohup rabbitmq-server >"$dir/stdout.log" 2>&1 &
    echo $! >"$dir/launcher.pid"
  )
  echo "rabbitmq.sh: starting $node on 127.0.0.1:$port (dir $dir)" >&2
  # await_startup fails at once until the node has registered with epmd: poll to a deadline.
  local deadline=$((SECONDS + 60)) up=0
  while ((SECONDS < deadline)); do
    if rabbitmqctl -q -n "$node" await_startup --timeout 30 >/dev/null 2>&1; then up=1; break; fi
    if ! kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null; then break; fi
    sleep 0.5
  done
  if ((up == 0)); then
    echo "rabbitmq.sh: node $node did not start; log follows" >&2
    tail -n 50 "$dir/stdout.log" >&2 || true
    HOOKGATE_TEST_RABBITMQ_DIR="$dir" stop >/dev/null 2>&1 || true
    exit 1
  fi
  echo "export HOOKGATE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:${port}/%2f"
  echo "export HOOKGATE_TEST_AMQPS_URL=amqps://guest:guest@localhost:${tls_port}/%2f"
  echo "export HOOKGATE_TEST_AMQPS_CA=$dir/ca.pem"
  echo "export HOOKGATE_TEST_RABBITMQ_DIR=$dir"
}

stop() {
  local dir="${1:-${HOOKGATE_TEST_RABBITMQ_DIR:-}}"
  if [[ -z "$dir" || ! -f "$dir/node" ]]; then
    echo "rabbitmq.sh stop: no node dir (set HOOKGATE_TEST_RABBITMQ_DIR or pass it)" >&2
    exit 1
  fi
  local node
  node=$(cat "$dir/node")
  timeout 30 rabbitmqctl -q -n "$node" stop >&2 2>&1 || {
    # Not answering: end the processes this script started, by pid only.
    [[ -f "$dir/pid" ]] && kill "$(cat "$dir/pid")" 2>/dev/null || true
    [[ -f "$dir/launcher.pid" ]] && kill "$(cat "$dir/launcher.pid")" 2>/dev/null || true
  }
  rm -rf "$dir"
  echo "rabbitmq.sh: stopped $node" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start | stop [DIR]" >&2; exit 2 ;;
esac
