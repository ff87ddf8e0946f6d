#!/usr/bin/env bash
# Creates .venv and installs graytune with the server, data and test extras (editable), and the
# Node.js packages of the second-client test. Re-runs are cheap: nothing is reinstalled until
# pyproject.toml or tests/node/package-lock.json changes.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.graytune-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
fi
node_stamp=tests/node/node_modules/.graytune-installed
node_want=$(sha256sum tests/node/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$node_stamp" 2>/dev/null)" != "$node_want" ]; then
  command -v npm >/dev/null || { echo "setup: npm not found; the Node.js client test needs it" >&2; exit 1; }
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
  echo "$node_want" > "$node_stamp"
fi
# haproxy (Debian's) stands in for the gRPC load balancer in the multi-replica test.
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
  else
    echo "setup: install haproxy (e.g. apt-get install haproxy) for the load-balancer test" >&2
    exit 1
  fi
fi
