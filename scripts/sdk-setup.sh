#!/usr/bin/env bash
# Installs the providers' official SDKs used by tests/providers.rs:
#   .venv/                      Python SDKs from tests/sdk/requirements*.txt
#   tests/sdk/node_modules/     npm packages from tests/sdk/package.json
# Idempotent: re-running is quick when both are already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

reqs=(tests/sdk/requirements.txt tests/sdk/requirements-b.txt)
stamp=.venv/.requirements.sha256
want=$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "${reqs[0]}" -r "${reqs[1]}"
    echo "$want" >"$stamp"
fi

pkg=tests/sdk/package.json
nstamp=tests/sdk/node_modules/.package.sha256
nwant=$(sha256sum "$pkg" | cut -d' ' -f1)
if [[ ! -f $nstamp || $(cat "$nstamp") != "$nwant" ]]; then
    (cd tests/sdk && npm install --no-audit --no-fund --silent --no-package-lock)
    echo "$nwant" >"$nstamp"
fi
echo "sdk-setup: .venv and tests/sdk/node_modules are ready"
