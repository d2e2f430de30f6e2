#!/usr/bin/env bash
# Prints the path of a promtool for the alert-rule tests (tests/deploy.rs): one on PATH, or
# the one taken from Debian's `prometheus` package into target/tools (downloaded and unpacked,
# not installed: no service is started). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
tool="$PWD/target/tools/promtool"
if [ ! -x "$tool" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1) || {
    [ "$(id -u)" -eq 0 ] && apt-get update -qq >/dev/null && (cd "$work" && apt-get download -qq prometheus >/dev/null)
  } || { echo "promtool: cannot download Debian's prometheus package" >&2; exit 1; }
  dpkg -x "$work"/prometheus_*.deb "$work/x"
  mkdir -p "$(dirname "$tool")"
  cp "$work/x/usr/bin/promtool" "$tool"
fi
echo "$tool"
