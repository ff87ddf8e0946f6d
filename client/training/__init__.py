"""One training loop for every task: schedule, resume, progress, metrics log, and the run
directory with its atomically written checkpoints and adapters."""
