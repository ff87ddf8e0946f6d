#!/usr/bin/env bash
# `docker compose up`, for real, on this host, end to end:
#   1. a Docker engine (dockerd started when none answers; Debian's docker.io installed if absent);
#   2. the images: the server's (CPU torch where download.pytorch.org answers) and, when no
#      registry answers, local stand-ins for the bases it needs (a debootstrapped Debian bookworm
#      with Python 3.11, PostgreSQL, Envoy);
#   3. the cpu profile: waits for the container's health check, fine-tunes against it from this
#      host with the CLI over TLS (R@1 must rise), restarting the container mid-run (the run must
#      finish, charged what it was served);
#   4. the replicas profile on the CPU (docker-compose.cpu.yml): PostgreSQL, two replicas, Envoy,
#      and a fine-tune through Envoy;
#   5. tears both down and prints image sizes, times and R@1.
# Needs root (dockerd, debootstrap) and the project's .venv (bash scripts/setup.sh).
#   sudo bash deploy/compose_e2e.sh [--keep]      (--keep: leave the work folder, for the logs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || { echo "compose_e2e: run bash scripts/setup.sh first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "compose_e2e: needs root (dockerd, debootstrap)" >&2; exit 1; }
KEEP=${1:-}
COMPOSE=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
VERSION=$("$PY" -c 'import graytune; print(graytune.__version__)')
WORK=$(mktemp -d /tmp/graytune-e2e.XXXXXX)
PROJECT=graytune-e2e
LOCAL_BASE=graytune-local/python:3.11-bookworm
STEPS=${GRAYTUNE_E2E_STEPS:-60}
export HF_HUB_OFFLINE=1
declare -A TIMES
phase() { echo; echo "== $(date +%T) $*"; }
timed() {  # timed NAME COMMAND...: runs it, records its seconds under NAME
  local name=$1 start=$SECONDS
  shift
  "$@"
  TIMES[$name]=$((SECONDS - start))
}
compose() { "$COMPOSE" -p "$PROJECT" --project-directory "$WORK" -f "$ROOT/docker-compose.yml" "$@"; }
reachable() { curl -s -o /dev/null --max-time 10 "$1"; }

cleanup() {
  compose --profile cpu --profile replicas down -v --remove-orphans >/dev/null 2>&1 || true
  if [ "$KEEP" = --keep ]; then echo "compose_e2e: work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

engine() {
  docker info >/dev/null 2>&1 && return
  if ! command -v dockerd >/dev/null; then
    apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y docker.io >/dev/null
  fi
  echo "starting dockerd (log: /var/log/graytune-dockerd.log)"
  nohup dockerd >/var/log/graytune-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
  echo "compose_e2e: dockerd did not answer in 60 s; see /var/log/graytune-dockerd.log" >&2
  exit 1
}

# An image by its upstream name if a registry gives it, else the local stand-in built by $2...
pulled_or() {
  local upstream=$1
  shift
  if timeout 60 docker pull -q "$upstream" >/dev/null 2>&1; then echo "$upstream"; else "$@"; fi
}

local_base() {  # Debian bookworm, minimal, with Python 3.11 and a venv whose pip is on PATH
  if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null ||
      { apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y debootstrap >/dev/null; }
    local rootfs=$WORK/rootfs
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
      bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1
    chroot "$rootfs" python3 -m venv /opt/venv
    # The CAs this host added (a TLS-inspecting proxy's, say) are trusted inside too, by pip as well.
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$rootfs" update-ca-certificates >/dev/null
    tar -C "$rootfs" -c . | docker import \
      --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
  fi
  echo "$LOCAL_BASE"
}

local_postgres() {
  docker build -q -t graytune-local/postgres:15 --build-arg BASE="$BASE" \
    -f deploy/local-images/postgres.Dockerfile deploy/local-images >/dev/null
  echo graytune-local/postgres:15
}

local_envoy() {
  local context=$WORK/envoy-context
  mkdir -p "$context"
  cp "$("$PY" -c 'import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), "envoy"))')" "$context/"
  docker build -q -t graytune-local/envoy:1.40 --build-arg BASE="$BASE" \
    -f deploy/local-images/envoy.Dockerfile "$context" >/dev/null
  echo graytune-local/envoy:1.40
}

# torch's CPU wheels from download.pytorch.org if it answers. Where it does not, PyPI's build
# (made for CUDA, and running on the CPU too, at several GB more): a CPU torch wheel alone would
# not do, as PyPI's torchvision needs the CUDA build's libraries.
torch_source() {
  if reachable https://download.pytorch.org/whl/cpu/torch/; then
    TORCH_INDEX=https://download.pytorch.org/whl/cpu
  else
    echo "download.pytorch.org does not answer: torch from PyPI (its CUDA build, on the CPU)" >&2
    TORCH_INDEX=https://pypi.org/simple
  fi
}

images() {
  BASE=$(pulled_or python:3.11-slim local_base)
  POSTGRES_IMAGE=$(pulled_or postgres:16-bookworm local_postgres)
  ENVOY_IMAGE=$(pulled_or envoyproxy/envoy:v1.40-latest local_envoy)
  torch_source
  docker build -q -t "graytune-server:$VERSION-cpu" --build-arg BASE="$BASE" --build-arg TORCH_INDEX="$TORCH_INDEX" . >/dev/null
  export GRAYTUNE_BASE_IMAGE=$BASE GRAYTUNE_POSTGRES_IMAGE=$POSTGRES_IMAGE GRAYTUNE_ENVOY_IMAGE=$ENVOY_IMAGE
}

# The owner's folder, as the compose file's header says to make it: keys, certificates, the
# model's weights (the built-in MNIST model, built here once and copied in), state.
owner_folder() {
  mkdir -p "$WORK"/{models/cache,secrets,certs,state,deploy/envoy}
  cp deploy/envoy/envoy.yaml "$WORK/deploy/envoy/"
  local weights
  weights=$("$PY" -c '
import graytune.server.compute.backbone  # registers the built-in model configs with OpenCLIP
from graytune.server.pretraining import builtin_weights
print(builtin_weights("graytune-tiny", "mnist"))')
  cp "$weights" "$WORK/models/graytune-tiny-mnist.safetensors"
  export GRAYTUNE_MODEL=graytune-tiny GRAYTUNE_WEIGHTS=/models/graytune-tiny-mnist.safetensors
  export GRAYTUNE_PORT=${GRAYTUNE_E2E_PORT:-50551} GRAYTUNE_METRICS_PORT=${GRAYTUNE_E2E_METRICS_PORT:-59464}
  GRAYTUNE_API_KEY=$(.venv/bin/graytune-server keys --file "$WORK/secrets/keys.json" \
    create --tier graybox --label compose-e2e --budget 10000000 | head -1)  # the secret
  export GRAYTUNE_API_KEY
  openssl rand -hex 24 >"$WORK/secrets/usage-db-password"
  (cd "$WORK/certs" &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=graytune-e2e-ca \
      -keyout ca.key -out ca.crt 2>/dev/null &&
    openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null &&
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1') -out server.crt 2>/dev/null &&
    rm -f ca.key server.csr)
  chown -R 1000:1000 "$WORK"/{models,state,secrets,certs}
  .venv/bin/graytune data digits --out "$WORK/data" >/dev/null
}

wait_healthy() {  # wait_healthy SERVICE...: until every container of each reports healthy
  local service id status
  for service in "$@"; do
    for id in $(compose ps -q "$service"); do
      for _ in $(seq 300); do
        status=$(docker inspect -f '{{.State.Health.Status}}' "$id")
        [ "$status" = healthy ] && break
        sleep 1
      done
      [ "$status" = healthy ] || { compose logs "$service" | tail -40; echo "$service: $status" >&2; exit 1; }
    done
  done
}

train() {  # train RUN_NAME FLAGS...: a DGA fine-tune of the digits, against $GRAYTUNE_PORT
  local name=$1
  shift
  .venv/bin/graytune train --task retrieval --method dga --steps "$STEPS" --eval-every "$STEPS" \
    --save-every 10 --lr 3e-3 --batch-size 32 --no-progress \
    --train-data "$WORK/data/train.csv" --val-data "$WORK/data/val.csv" \
    --output-dir "$WORK/runs/$name" --endpoint "localhost:$GRAYTUNE_PORT" "$@" >"$WORK/$name.log" 2>&1
}

recall() {  # recall RUN_NAME: "R@1 zero-shot -> fine-tuned", and fails unless it rose
  "$PY" - "$WORK/runs/$1/metrics.jsonl" <<'EOF'
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if "image_to_text_R@1" in r]
first, last = evals[0]["image_to_text_R@1"], evals[-1]["image_to_text_R@1"]
print(f"image->text R@1 {first:.3f} -> {last:.3f} (steps {evals[0]['step']} -> {evals[-1]['step']})")
sys.exit(0 if last > first else 1)
EOF
}

# billed RUN_NAME LEDGER: the samples the run was served (its Embed and Forward samples, as each
# reply reported them) against the samples `keys list` says the key used; fails unless equal.
billed() {
  local used served
  used=$(grep -o 'used [0-9]*' <<<"$2" | cut -d' ' -f2)
  served=$("$PY" -c '
import json, sys
usage = [r for r in map(json.loads, open(sys.argv[1])) if "oracle/Forward_samples" in r][-1]
print(usage.get("oracle/Embed_samples", 0) + usage["oracle/Forward_samples"])' "$WORK/runs/$1/metrics.jsonl")
  echo "samples served $served, charged $used"
  [ "$used" = "$served" ]
}

past_first_checkpoint() {  # RUN_NAME PID: waits until the run has written its first checkpoint
  until [ -s "$WORK/runs/$1/latest" ]; do
    kill -0 "$2" 2>/dev/null || { cat "$WORK/$1.log"; exit 1; }
    sleep 1
  done
}

calls_served() {  # CONTAINER_ID: the audit lines of the calls it served
  docker logs "$1" 2>&1 | grep -c 'call method=' || true
}

cpu_profile() {
  compose --profile cpu up -d --no-build graytune-server-cpu
  timed cpu_healthy wait_healthy graytune-server-cpu
  train cpu --tls-ca "$WORK/certs/ca.crt" &
  local trainer=$!
  past_first_checkpoint cpu "$trainer"
  echo "restarting the server container mid-run"
  timed cpu_restart compose --profile cpu restart graytune-server-cpu
  wait "$trainer" || { cat "$WORK/cpu.log"; exit 1; }
  R_CPU=$(recall cpu) || { echo "cpu profile: R@1 did not rise: $R_CPU" >&2; exit 1; }
  echo "$R_CPU"
  B_CPU=$(billed cpu "$(.venv/bin/graytune-server keys --file "$WORK/secrets/keys.json" list \
    --usage-db "$WORK/state/usage.sqlite")") || { echo "cpu profile: $B_CPU" >&2; exit 1; }
  echo "$B_CPU"
  compose --profile cpu down
}

replicas_profile() {
  local cpu=(-f "$ROOT/docker-compose.cpu.yml")
  compose "${cpu[@]}" --profile replicas up -d --no-build graytune-lb
  timed replicas_healthy wait_healthy graytune-usage-db graytune-replicas
  # One client's calls all hash to one replica: stop that one mid-run (it drains, Envoy moves the
  # client to the other), and the run must finish.
  local start=$SECONDS id ledger serving
  train replicas &
  local trainer=$!
  past_first_checkpoint replicas "$trainer"
  for id in $(compose "${cpu[@]}" --profile replicas ps -q graytune-replicas); do
    if [ "$(calls_served "$id")" -gt 0 ]; then serving=$id; fi
  done
  echo "stopping the replica serving the run mid-run: $(docker inspect -f '{{.Name}}' "$serving")"
  timed replica_stop docker stop "$serving" >/dev/null
  wait "$trainer" || { cat "$WORK/replicas.log"; exit 1; }
  TIMES[replicas_train]=$((SECONDS - start))
  R_REPLICAS=$(recall replicas) || { echo "replicas profile: R@1 did not rise: $R_REPLICAS" >&2; exit 1; }
  echo "$R_REPLICAS"
  for id in $(compose "${cpu[@]}" --profile replicas ps -a -q graytune-replicas); do
    echo "$(docker inspect -f '{{.Name}}' "$id"): $(calls_served "$id") calls served"
  done
  docker start "$serving" >/dev/null
  wait_healthy graytune-replicas
  ledger=$(compose "${cpu[@]}" --profile replicas exec -T -e PGPASSWORD="$(cat "$WORK/secrets/usage-db-password")" \
    graytune-replicas graytune-server keys --file /secrets/keys.json list \
    --usage-db postgresql://graytune@graytune-usage-db:5432/graytune)
  B_REPLICAS=$(billed replicas "$ledger") || { echo "replicas profile: $B_REPLICAS" >&2; exit 1; }
  echo "$B_REPLICAS"
  compose "${cpu[@]}" --profile replicas down -v
}

phase "engine";            timed engine engine
phase "images";            timed images images
phase "owner folder";      timed owner_folder owner_folder
phase "cpu profile";       timed cpu_profile cpu_profile
phase "replicas profile";  timed replicas_profile replicas_profile
phase "summary"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "graytune|postgres|envoy|python"
for name in engine images owner_folder cpu_healthy cpu_restart cpu_profile replicas_healthy replica_stop replicas_train \
  replicas_profile; do
  printf '%-18s %5s s\n' "$name" "${TIMES[$name]:-}"
done
echo "cpu profile (restarted mid-run): $R_CPU; $B_CPU"
echo "replicas profile (through Envoy): $R_REPLICAS; $B_REPLICAS"
