"""One folder per method, each with its options (the flags it takes), its saved config, its
model and its trainer; registry.py names them.

    graybox/        DGA and LGA: input and output adapters (LGA: and deep prompts), by gradient
    linear_probe/   a classifier on the frozen image embeddings
    craft/          CraFT: a black-box prompt by CMA-ES and a refinement module
    gradient.py     the optimiser step DGA, LGA and the linear probe share
    base.py         AdapterConfig, Method, Trainer: what a method plugs into the run loop
"""
