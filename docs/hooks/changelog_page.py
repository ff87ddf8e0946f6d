"""MkDocs hook: the site's changelog page is CHANGELOG.md at the repository's root, read at
build time (registered in mkdocs.yml's `hooks:`; the page is not committed under docs/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

CHANGELOG = "CHANGELOG.md"  # relative to mkdocs.yml's folder
PAGE = "changelog.md"  # as nav names it


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    path = Path(config.config_file_path).resolve().parent / CHANGELOG
    files.append(File.generated(config, PAGE, content=path.read_text(encoding="utf-8")))
    return files
