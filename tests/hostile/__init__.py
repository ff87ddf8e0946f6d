"""Hostile input for the gradient oracle, property-based (issue 8).

  wire          a request as it travels: tensors, header, stream edits; encoded to raw bytes
  requests      hypothesis strategies of VALID requests for each RPC
  mutations     changes to a request's tensors, header, handle, key and metadata, each naming
                the statuses it may cause
  stream_edits  changes to its encoded stream of messages
  cases         a valid request with up to two of those; the seeded runs of them
  runner        sends a case to a real server, with another caller watching, and judges it

Used by tests/test_fuzz.py and benchmarks/fuzz.py (which puts tests/ on sys.path). It lives
under tests/ because it is test code that needs the dev extra (hypothesis), and pytest puts
tests/ on sys.path already; the benchmark is a thin driver around it.
"""
