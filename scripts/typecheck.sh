#!/usr/bin/env bash
# mypy on the whole package. The package `graytune` lives in three source folders (pyproject.toml's
# package-dir: protos/graytune, server, client), which mypy cannot map into one package, so it
# checks a symlink farm of the installed layout instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
farm=$(mktemp -d)
trap 'rm -rf "$farm"' EXIT
# protos/graytune is itself a folder: a real graytune/ holds links to its entries, beside server and client.
mkdir "$farm/graytune"
for entry in "$root"/protos/graytune/*; do
  ln -s "$entry" "$farm/graytune/"
done
ln -s "$root/server" "$farm/graytune/server"
ln -s "$root/client" "$farm/graytune/client"
cd "$farm"
# pyproject.toml's `files` names the farm's graytune (relative to it).
"$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" "$@"
