"""The wire: OracleClient (calls, retries, TLS), the remote towers that carry autograd through
the server, what a key's tier allows, and a local server process for demos and tests."""
