"""Few-shot classification: labelled image folders or files, class prompts, top-k accuracy."""
