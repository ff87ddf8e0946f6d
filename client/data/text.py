"""Text files of one item per line (class names, prompt templates, texts to embed), and class
names as prompts say them."""

from __future__ import annotations

from graytune.client.data.tables import DataError


def prompt_name(classname: str) -> str:
    """A folder name as a prompt says it: `golden_retriever` -> `golden retriever`."""
    return classname.replace("_", " ")


def read_lines(path: str, what: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of a UTF-8 text file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what} file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not lines:
        raise DataError(f"{path}: no {what} in it")
    return lines
