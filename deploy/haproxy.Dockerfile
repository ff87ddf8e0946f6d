# The gRPC load balancer of the `replicas` compose profile: Debian's haproxy, our config.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/haproxy.cfg /etc/haproxy/graytune.cfg
USER haproxy
ENTRYPOINT ["haproxy", "-db", "-f", "/etc/haproxy/graytune.cfg"]
