"""Using trained adapters: load them as a model, embed a corpus, predict classes."""
