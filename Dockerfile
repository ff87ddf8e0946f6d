# graytune's owner server. TORCH_INDEX selects the torch wheels: CPU by default; the compose
# file's GPU services build with the CUDA 12.4 wheels:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# BASE is any Debian-like image with Python 3.11 whose `pip` is on PATH (a registry's
# python:3.11-slim by default; deploy/compose_e2e.sh builds one locally when no registry answers).
# tests/test_container_env.py runs this file's install commands in a fresh venv, so what the
# image holds is what the tests ran.
ARG BASE=python:3.11-slim
FROM $BASE
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY server server
COPY client client
RUN pip install --extra-index-url "$TORCH_INDEX" ".[server,fleet]"
# The server runs as uid 1000. /models/cache and /state are created here with that owner, so
# named volumes start writable; host folders bind-mounted there must be owned by uid 1000
# (README: "Volumes and permissions").
RUN useradd --create-home --uid 1000 graytune \
 && mkdir -p /models/cache /state \
 && chown -R graytune:graytune /models /state
USER graytune
EXPOSE 50051 9464
ENTRYPOINT ["graytune-server", "--host", "0.0.0.0", "--port", "50051"]
