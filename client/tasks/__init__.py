"""One package per task: what only that task knows (its data sets, loss, metrics, evaluation).

retrieval/   text-image retrieval (the default)
classify/    few-shot classification
sketch/      sketch-image retrieval
video/       text-video retrieval
"""

from __future__ import annotations

import dataclasses
import importlib

# name -> "module:class", imported when asked for
TASKS = {
    "retrieval": "retrieval.task:RetrievalTask",
    "classify": "classify.task:ClassifyTask",
    "sketch": "sketch.task:SketchTask",
    "video": "video.task:VideoTask",
}


def task_class(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(f"graytune.client.tasks.{module}"), cls)


def make_task(name: str, oracle, csv_format=None, options: dict | None = None):
    """The task `name` with its options (a dict of its Options' fields); one it has not is refused."""
    cls = task_class(name)
    options = dict(options or {})
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls.Options)})
    if unknown:
        raise ValueError(f"task {name} has no option {', '.join(unknown)}")
    return cls(oracle, csv_format, cls.Options(**options))
