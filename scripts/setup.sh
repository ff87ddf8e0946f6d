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
# Debian packages: PostgreSQL is the fleet's usage store in the tests (each run starts its own
# from a temporary folder, never as a service); the colour emoji font is the evidence suite's
# image-text data (benchmarks/evidence/emoji.py); prometheus ships promtool, which checks and
# unit-tests deploy/monitoring's alert rules (the service itself is never started).
debian=()
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || debian+=(postgresql)
command -v promtool >/dev/null || debian+=(prometheus)
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || debian+=(fonts-noto-color-emoji)
if [ ${#debian[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # Another apt run (a second clone's set-up) may hold the lock: wait for it, not fail.
    apt="apt-get -qq -o DPkg::Lock::Timeout=600"
    $apt update && DEBIAN_FRONTEND=noninteractive $apt install -y "${debian[@]}" >/dev/null
  else
    echo "setup: install ${debian[*]} (e.g. apt-get install ${debian[*]}) for the tests" >&2
    exit 1
  fi
fi
