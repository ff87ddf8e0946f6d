# The owner's server. CPU by default; on a GPU host, build with the CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 GRAYTUNE_CACHE=/models/cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY server server
COPY client client
RUN pip install --extra-index-url "$TORCH_INDEX" ".[server]"
EXPOSE 50051
ENTRYPOINT ["graytune-server", "--host", "0.0.0.0", "--port", "50051"]
