"""MkDocs hook: the benchmark results page, generated at build time from benchmarks/results/.

Registered in mkdocs.yml (`hooks:`). Nothing it makes is committed: the page
(benchmarks/results.md) and copies of the results' images and JSON files exist only in the
built site. Each folder under benchmarks/results/ becomes one section: its Markdown files
included, its JSON files rendered as tables and linked, its images shown. A folder of many
small JSON files (the accuracy table's remembered runs) becomes one table, a row per file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = "benchmarks/results"  # relative to mkdocs.yml's folder, and the copies' place in the site
PAGE = "benchmarks/results.md"  # the generated page, as nav names it
IMAGES = {".png", ".svg", ".jpg", ".jpeg", ".gif"}
MANY = 12  # a folder with more JSON files than this: one table, a row per file
MAX_COLUMNS = 12  # a table's columns; the rest are named under it
MAX_ROWS = 40  # longer lists are summarised, not tabulated
SHORT_LIST = 8  # lists of scalars up to this length are shown inline


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    root = Path(config.config_file_path).resolve().parent
    results = root / RESULTS
    for path in sorted(results.rglob("*")):
        bulk = _is_bulk(path.parent)
        if path.is_file() and (path.suffix in IMAGES or (path.suffix == ".json" and not bulk)):
            uri = f"{RESULTS}/{path.relative_to(results).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    files.append(File.generated(config, PAGE, content=results_page(results)))
    return files


def results_page(results: Path) -> str:
    intro = (
        f"Generated from `{RESULTS}/` each time this site is built (`docs/hooks/results_page.py`): "
        "one section per folder, with its Markdown summaries, its JSON files as tables (each "
        "linked) and its plots. How to produce them: [Running the benchmarks](index.md); what "
        "they say, with the day and the machine's state of each measurement: "
        "[Analysis](analysis.md)."
    )
    out = ["# Benchmark results", "", intro, ""]
    folders = sorted(
        {p.parent for p in results.rglob("*") if p.is_file()},
        key=lambda p: (p != results, p.relative_to(results).as_posix()),
    )
    if not folders:
        out.append(f"`{RESULTS}/` holds no results.")
    for folder in folders:
        out += _folder_section(results, folder)
    return "\n".join(out) + "\n"


def _is_bulk(folder: Path) -> bool:
    return sum(1 for p in folder.glob("*.json")) > MANY


def _folder_section(results: Path, folder: Path) -> list[str]:
    rel = folder.relative_to(results).as_posix()
    link = RESULTS.split("/")[-1] + ("" if rel == "." else f"/{rel}")  # relative to PAGE
    out = ["", f"## `{RESULTS}/{'' if rel == '.' else rel + '/'}`", ""]
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if _is_bulk(folder):
        out += _bulk_table(folder)
        files = [p for p in files if p.suffix != ".json"]
    stems: dict[str, list[Path]] = {}
    for path in files:
        stems.setdefault(path.stem, []).append(path)
    for stem, group in stems.items():
        suffixes = {p.suffix: p for p in group}
        out += ["", f"### {stem}", ""]
        names = ", ".join(
            f"[`{p.name}`]({link}/{p.name})" if p.suffix in IMAGES or p.suffix == ".json" else f"`{p.name}`"
            for p in group
        )
        out += [f"Files: {names}.", ""]
        if ".md" in suffixes:  # a benchmark's own summary of its JSON: shown as it wrote it
            out += _included_markdown(suffixes[".md"], link)
        elif ".json" in suffixes:
            out += _json_section(suffixes[".json"])
        for path in group:
            if path.suffix in IMAGES:
                out += ["", f"![{stem}]({link}/{path.name})", ""]
    return out


def _included_markdown(path: Path, link: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^(#{1,4}) ", lambda m: "###" + m.group(1) + " ", text, flags=re.MULTILINE)  # under ###
    # Relative links of the file, made relative to the page.
    text = re.sub(r"\]\((?![a-z]+:|#|/)([^)]+)\)", lambda m: f"]({link}/{m.group(1)})", text)
    return [text.rstrip(), ""]


def _bulk_table(folder: Path) -> list[str]:
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            data = {"error": f"not JSON: {exc}"}
        rows.append((path.stem, data if isinstance(data, dict) else {"value": data}))
    out = [f"{len(rows)} JSON files, one row each (not copied into the site; the repository has them).", ""]
    body = _records_table(rows, "file")
    return out + [f'??? note "{len(rows)} files"', ""] + ["    " + line if line else "" for line in body] + [""]


def _json_section(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return [f"Not readable as JSON: {exc}.", ""]
    return _render(data, depth=0)


# ---- JSON as Markdown ---------------------------------------------------------------------------


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _is_short_list(v: Any) -> bool:
    """A list shown inline: a few scalars, or strings that fit a cell (a command line's arguments)."""
    if not isinstance(v, list) or not all(_is_scalar(x) for x in v):
        return False
    return len(v) <= SHORT_LIST or (all(isinstance(x, str) for x in v) and len(" ".join(v)) <= 120)


def _is_field(v: Any) -> bool:
    return _is_scalar(v) or _is_short_list(v)


def _cell(v: Any) -> str:
    if v is None:
        text = "–"
    elif isinstance(v, bool):
        text = "true" if v else "false"
    elif isinstance(v, int):
        text = f"{v:,}" if abs(v) >= 10_000 else str(v)
    elif isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return _cell(int(v))
    elif isinstance(v, float):
        text = f"{v:.4g}"
    elif isinstance(v, list):
        if _is_short_list(v):
            text = "[" + ", ".join(_cell(x) for x in v) + "]"
        else:
            text = f"{len(v)} items"
    elif isinstance(v, dict):
        text = f"{len(v)} fields"
    else:
        text = str(v)
    if len(text) > 160:
        text = text[:157] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _flat(d: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A record's columns: its own fields, then whole sub-records (smallest first) while
    MAX_COLUMNS allows; and the names of what did not fit."""
    columns = {k: v for k, v in d.items() if _is_field(v)}
    left_out = []
    nested = sorted(((k, v) for k, v in d.items() if isinstance(v, dict)), key=lambda kv: len(kv[1]))
    for key, sub in nested:
        leaves = {f"{key}.{k}": v for k, v in sub.items() if _is_field(v)}
        if leaves and len(leaves) == len(sub) and len(columns) + len(leaves) <= MAX_COLUMNS:
            columns.update(leaves)
        else:
            left_out.append(key)
    for key, v in d.items():
        if isinstance(v, list) and not _is_short_list(v):
            columns[key] = v  # shown as "N items"
    return columns, left_out


def _records_table(rows: list[tuple[str, dict[str, Any]]], label: str) -> list[str]:
    flats = [(name, *_flat(d)) for name, d in rows]
    keys: list[str] = []
    for _, columns, _ in flats:
        keys += [k for k in columns if k not in keys]
    shown, dropped = keys[:MAX_COLUMNS], keys[MAX_COLUMNS:]
    out = ["| " + " | ".join([label] + [_cell(k) for k in shown]) + " |", "|" + "---|" * (len(shown) + 1)]
    for name, columns, _ in flats:
        out.append("| " + " | ".join([_cell(name)] + [_cell(columns[k]) if k in columns else "" for k in shown]) + " |")
    left_out = sorted({k for _, _, lo in flats for k in lo} | set(dropped))
    if left_out:
        out += ["", "Not shown here (in the JSON file): " + ", ".join(f"`{k}`" for k in left_out) + "."]
    return out + [""]


def _fields_table(fields: dict[str, Any]) -> list[str]:
    out = ["| field | value |", "|---|---|"]
    out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in fields.items()]
    return out + [""]


def _render(data: Any, depth: int) -> list[str]:
    if isinstance(data, list):
        return _render_list("", data, depth)
    if not isinstance(data, dict):
        return [f"Value: {_cell(data)}", ""]
    fields: dict[str, Any] = {}
    rest = []
    for key, v in data.items():
        if _is_field(v):
            fields[key] = v
        elif isinstance(v, dict) and _is_columns(v):
            rest.append((key, v))
        elif isinstance(v, dict) and v and all(_is_field(x) for x in v.values()) and len(v) <= SHORT_LIST:
            fields.update({f"{key}.{k}": x for k, x in v.items()})
        else:
            rest.append((key, v))
    out = _fields_table(fields) if fields else []
    for key, v in rest:
        title = f"**`{key}`**"
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            out += [title, ""] + _records_table(list(v.items()), "")
        elif isinstance(v, dict) and _is_columns(v):
            out += [title, ""] + _columns_table(v)
        elif isinstance(v, dict):
            if depth < 2:
                out += [title, ""] + _render(v, depth + 1)
            else:
                out += [f"{title}: {len(v)} fields (in the JSON file).", ""]
        else:
            out += _render_list(title, v, depth)
    return out


def _is_columns(d: dict[str, Any]) -> bool:
    """A dict of equal-length lists of scalars: one table column each."""
    lengths = {len(v) if isinstance(v, list) and all(_is_scalar(x) for x in v) else -1 for v in d.values()}
    return len(d) >= 2 and len(lengths) == 1 and 1 < next(iter(lengths)) <= MAX_ROWS and len(d) <= MAX_COLUMNS


def _columns_table(d: dict[str, list[Any]]) -> list[str]:
    keys = list(d)
    out = ["| " + " | ".join(_cell(k) for k in keys) + " |", "|" + "---|" * len(keys)]
    for i in range(len(d[keys[0]])):
        out.append("| " + " | ".join(_cell(d[k][i]) for k in keys) + " |")
    return out + [""]


def _render_list(title: str, items: list[Any], depth: int) -> list[str]:
    head = [title, ""] if title else []
    if all(_is_scalar(x) for x in items):
        numbers = [x for x in items if isinstance(x, (int, float)) and not isinstance(x, bool)]
        span = f", from {_cell(min(numbers))} to {_cell(max(numbers))}" if numbers else ""
        return [f"{title + ': ' if title else ''}{len(items)} values{span} (in the JSON file).", ""]
    if not all(isinstance(x, dict) for x in items):
        return [f"{title + ': ' if title else ''}{len(items)} items (in the JSON file).", ""]
    if len(items) > MAX_ROWS:
        fields = ", ".join(f"`{k}`" for k in items[0])
        return [f"{title + ': ' if title else ''}{len(items)} records of {fields} (in the JSON file).", ""]
    if depth == 0 and any(not all(_is_field(v) for v in x.values()) for x in items):
        out = head
        for i, item in enumerate(items, 1):
            out += ([f"**{i} of {len(items)}**", ""] if len(items) > 1 else []) + _render(item, depth + 1)
        return out
    return head + _records_table([(str(i), x) for i, x in enumerate(items, 1)], "")
