"""`graytune eval`, `graytune embed` and `graytune predict`: data through oracle + adapters, in batches."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from tqdm import tqdm

from graytune.client.data.batches import chunks
from graytune.client.data.preprocess import preprocess_for
from graytune.client.data.tables import CsvFormat
from graytune.client.inference import corpus, outputs
from graytune.client.inference.model import Classifier, load_model
from graytune.client.methods.graybox.cross_domain import CrossDomainCLIP
from graytune.client.methods.registry import load_adapters, read_config
from graytune.client.modules.backbone import ZeroShotCLIP
from graytune.client.tasks import make_task
from graytune.client.tasks.base import Metrics
from graytune.client.transport import access
from graytune.client.transport.oracle_client import OracleClient

log = logging.getLogger("graytune.client")
B = TypeVar("B")  # a batch as loaded: pixels, clips or texts


def evaluate(
    oracle: OracleClient,
    data: str,
    adapter: str | None = None,
    task: str | None = None,
    csv_format: CsvFormat | None = None,
    task_options: dict | None = None,
    batch_size: int = 64,
) -> Metrics:
    """The task's metrics on `data` of the adapters in `adapter` (None: the backbone alone).
    `task` defaults to the one the adapters were trained for (else retrieval)."""
    info = oracle.info()
    if adapter:
        config = read_config(adapter)
        config.check_backbone(oracle)  # before the data is read (load_adapters checks again: no call)
        access.require(info, f"evaluation of {config.method} adapters", config.need(training=False))
        trained_for = config.task.get("name", "retrieval")
        if task not in (None, trained_for):
            raise ValueError(f"--task {task}: {adapter} was trained for --task {trained_for}")
        task = trained_for
    else:
        access.require(info, "zero-shot evaluation", access.ZERO_SHOT)
    runner = make_task(task or "retrieval", oracle, csv_format, task_options)
    if adapter:
        runner.restore(config.task)
    _, dataset = runner.load(None, data, seed=0)
    model = load_adapters(adapter, oracle, config=config) if adapter else ZeroShotCLIP(oracle)
    return runner.evaluate(model, dataset, batch_size)


@torch.no_grad()
def in_batches(
    compute: Callable[[B], torch.Tensor],
    items: list[corpus.Item],
    load: Callable[[list[corpus.Item]], B],
    batch_size: int,
    progress: bool,
    what: str,
) -> torch.Tensor:
    """compute(load(batch)) for consecutive batches of `items`, concatenated: (N, ...)."""
    bar = tqdm(
        total=len(items), desc=what, unit=what.split()[-1], disable=None if progress else True, dynamic_ncols=True
    )  # None: terminals only
    results = []
    for batch in chunks(items, batch_size):
        results.append(compute(load(batch)))
        bar.update(len(batch))
    bar.close()
    return torch.cat(results)


def embed(
    oracle: OracleClient,
    adapter: str | None,
    kind: str,
    source: str,
    out: str,
    batch_size: int = 64,
    frames: int | None = None,
    domain: str | None = None,
    progress: bool = True,
    **table,
) -> int:
    """Writes the embeddings of the images, texts or videos `source` lists to `out`; -> how many."""
    outputs.check_output(out, outputs.EMBEDDING_FORMATS)
    model = load_model(adapter, oracle)
    saved = getattr(getattr(model, "config", None), "task", {})
    if isinstance(model, CrossDomainCLIP):
        if kind != "images" or domain not in model.config.domains:
            raise ValueError(
                f"{adapter} holds sketch-retrieval adapters: embed --images with "
                f"--domain {' or '.join(model.config.domains)}"
            )
        encode = functools.partial(model.encode_image, domain=domain)
    elif domain is not None:
        raise ValueError("--domain: only for adapters trained with --task sketch")
    else:
        encode = {
            "images": model.encode_image,
            "texts": model.encode_text,
            "videos": getattr(model, "encode_video", None),
        }[kind]
    if encode is None:
        raise ValueError(f"{adapter}: these adapters embed images, not videos")
    load: Callable[[list[corpus.Item]], torch.Tensor | list[str]]
    if kind == "texts":
        items, load = corpus.list_texts(source), (lambda batch: [i.source for i in batch])
    else:
        preprocess = preprocess_for(oracle)
        if kind == "images":
            items, load = corpus.list_images(source, **table), corpus.image_loader(preprocess)
        else:
            clip_frames = frames or saved.get("frames", 8)
            items, load = corpus.list_videos(source, **table), corpus.video_loader(preprocess, clip_frames)
    embeddings = in_batches(encode, items, load, batch_size, progress, f"embedding {kind}")
    outputs.write_embeddings(out, [i.id for i in items], embeddings)
    log.info("wrote %d embeddings of %d dimensions to %s", *embeddings.shape, out)
    return len(items)


def predict(
    oracle: OracleClient,
    adapter: str | None,
    source: str,
    out: str,
    batch_size: int = 64,
    classify_options: dict | None = None,
    progress: bool = True,
    **table,
) -> int:
    """Writes each image's predicted class and class probabilities to `out` (CSV); -> how many."""
    outputs.check_output(out, (".csv",))
    model = load_model(adapter, oracle, classify_options)
    if not isinstance(model, Classifier):
        raise ValueError(
            f"{adapter} holds adapters for --task {model.config.task.get('name', 'retrieval')}: "
            f"predict needs classification adapters (or none, with --classnames)"
        )
    items = corpus.list_images(source, **table)
    probabilities = in_batches(
        model.classify, items, corpus.image_loader(preprocess_for(oracle)), batch_size, progress, "classifying images"
    )
    outputs.write_predictions(out, [i.id for i in items], probabilities, model.classnames)
    return len(items)
