"""One package per task: what only that task knows (its data sets, loss, metrics, evaluation)."""
