"""The gRPC face (grpc.aio): the servicer, the server with health and capped reflection,
admission (calls in flight per key), request streams read at a minimum pace, the usage store
awaited with a time limit, Describe, per-call records and Prometheus metrics."""
