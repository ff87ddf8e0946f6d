"""Data set files: CSV/TSV (header row) or JSONL (one object per line), read row by row with
their line numbers, so every error names the file and the line."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from graytune.client.options import option


class DataError(ValueError):
    """A data set file or one of its images cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class CsvFormat:
    """The columns (or JSONL keys) and separator of data set files (OpenCLIP's flags)."""

    csv_img_key: str = option("filepath", "column (or JSONL key) of image paths")
    csv_caption_key: str = option("title", "column (or JSONL key) of captions (retrieval, video)")
    csv_label_key: str = option("label", "column (or JSONL key) of labels (classify)")
    csv_separator: str = option("\t", "column separator of .csv/.tsv files (default: a tab, as OpenCLIP)")

    def reader(self, *keys: str) -> dict[str, str]:
        """A reader's keyword arguments: reader("img_key", "separator") -> {"img_key": ..., ...}."""
        return {key: getattr(self, f"csv_{key}") for key in keys}


def read_table(path: str, separator: str = "\t") -> Iterator[tuple[int, dict]]:
    """Yields (line number, row dict) of a .csv/.tsv (`separator`) or .jsonl file."""
    extension = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder, not a data set file (.csv, .tsv or .jsonl)")
    if extension in (".csv", ".tsv"):
        rows = _read_csv_rows(path, separator)
    elif extension == ".jsonl":
        rows = _read_jsonl_rows(path)
    else:
        raise DataError(f"{path}: unsupported data set format {extension!r}; use .csv, .tsv or .jsonl")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such data set file")
    try:
        yield from rows
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file: {e}") from None


def _read_csv_rows(path: str, separator: str):
    """Yields (line number, row dict)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=separator)
        for row in reader:
            yield reader.line_num, row


def _read_jsonl_rows(path: str):
    """Yields (line number, row dict), skipping blank lines."""
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line}: invalid JSON: {e}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line}: expected a JSON object, got {type(row).__name__}")
            yield line, row


def field(row: dict, key: str, path: str, line: int) -> str:
    value = row.get(key)
    if value is None:
        # csv.DictReader gives None for fields missing from a short row.
        columns = [k for k in row if k is not None]
        raise DataError(f"{path}, line {line}: missing key {key!r} (found: {columns}){_separator_hint(key, columns)}")
    if not isinstance(value, str) or not value:
        raise DataError(f"{path}, line {line}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _separator_hint(key: str, columns: list[str]) -> str:
    """Where one column holds the key beside others ("filepath,title"), the separator it uses."""
    for separator in (",", "\t", ";", "|"):
        if any(key in column.split(separator) for column in columns if separator in column):
            return f"; the columns look separated by {separator!r}: add --csv-separator {separator!r}"
    return ""
