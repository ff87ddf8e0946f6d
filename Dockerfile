# graytune's owner server. CPU wheels of torch by default; for a GPU host build with
#   docker compose build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY server server
COPY client client
RUN pip install --extra-index-url "$TORCH_INDEX" ".[server]" \
 && useradd --create-home --uid 1000 graytune
USER graytune
EXPOSE 50051 9464
ENTRYPOINT ["graytune-server", "--host", "0.0.0.0", "--port", "50051"]
