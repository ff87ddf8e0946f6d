"""The gRPC face: the servicer, the server with health and reflection, Describe, per-call
records, Prometheus metrics, and the call-time watchdog."""
