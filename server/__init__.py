"""The model owner's side: a frozen OpenCLIP backbone served as a gradient oracle over gRPC.

access/          who may call: keys, tiers, budgets, gradient protection, audit
compute/         what is computed: backbone, towers, request checks, device queue, graph store
service/         the gRPC face (asyncio): servicer, admission, request streams, Describe, metrics
pretraining.py   the built-in demo weights, trained here once (not on the serving path)
cli.py           `graytune-server`
"""
