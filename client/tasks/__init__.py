"""One package per task: what only that task knows (its data sets, loss, metrics, evaluation).

    retrieval/   text-image retrieval (the default)
    classify/    few-shot classification
    sketch/      sketch-image retrieval
    video/       text-video retrieval
"""
from __future__ import annotations

import importlib
import inspect

# name -> "module:class", imported when asked for
TASKS = {"retrieval": "retrieval.task:RetrievalTask", "classify": "classify.task:ClassifyTask",
         "sketch": "sketch.task:SketchTask", "video": "video.task:VideoTask"}


def task_class(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(f"graytune.client.tasks.{module}"), cls)


def make_task(name: str, oracle, csv_format: dict, options: dict):
    """The task `name` with its options (the CLI's task flags); an option it has not is refused."""
    cls = task_class(name)
    unknown = sorted(set(options) - set(inspect.signature(cls.__init__).parameters) - {"self", "oracle"})
    if unknown:
        raise ValueError(f"task {name} has no option {', '.join(unknown)}")
    return cls(oracle, csv_format, **options)
