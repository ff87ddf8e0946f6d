"""A step's tower calls run on threads of their own, in the caller's grad mode."""

from __future__ import annotations

import threading

import torch

from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.methods.graybox.model import GrayboxCLIP
from graytune.client.tasks.retrieval.task import contrastive_step_loss
from graytune.client.transport.concurrent import concurrently


def test_results_come_back_in_order_and_in_the_callers_grad_mode():
    threads = []

    def probe(value):
        threads.append(threading.current_thread().name)
        return value, torch.is_grad_enabled()

    with torch.no_grad():
        assert concurrently(lambda: probe(1), lambda: probe(2)) == ((1, False), (2, False))
    assert concurrently(lambda: probe(3), lambda: probe(4)) == ((3, True), (4, True))
    assert threads.count(threading.main_thread().name) == 2, "the last call runs on the caller's thread"


def test_an_evaluation_under_no_grad_stays_gradient_free(oracle, digits):
    from graytune.client.data.preprocess import preprocess_for
    from graytune.client.tasks.retrieval.data import ImageCaptionDataset

    batch = ImageCaptionDataset(digits["train"], preprocess_for(oracle)).batch(range(4))
    model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle), oracle)
    with torch.no_grad():
        contrastive_step_loss(model, *batch)
    assert (oracle.calls["Embed"], oracle.calls["Forward"]) == (2, 0)
    contrastive_step_loss(model, *batch).backward()
    assert (oracle.calls["Forward"], oracle.calls["Backward"]) == (2, 2)
    assert model.pixel_adapter.convs[0].weight.grad.abs().sum() > 0
