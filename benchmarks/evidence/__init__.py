"""The benchmark suite's shared parts: where results go (output.py), the benchmark owner model,
its data, the target domains, and the methods compared in one table (`benchmarks/owner_model.py`,
`benchmarks/accuracy_table.py`)."""
