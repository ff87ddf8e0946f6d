"""CraFT (Wang et al., ICML 2024): black-box few-shot classification, no gradient ever asked for.

Two modules collaborate. The prompt: a context p0 + A·z over a template that stays on the
server, z searched by CMA-ES (search.py) and scored through the oracle's context-delta Embed, one
call per generation. The refinement: logits + MLP(logits), trained on the client (model.py).
Each is trained with the other's predictions as a soft target (losses.py), alternating one
generation with one epoch (loop.py), until the query budget is spent.

    graytune train --task classify --method craft --shots 16 --queries 8000 ...
"""
