"""The customer's modules around the remote backbone: input adapters before it, output
adapters after it (DGA; with deep prompts, LGA), and the backbone alone for zero-shot."""
