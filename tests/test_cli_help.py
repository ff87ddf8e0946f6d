"""Every option of every `graytune` command explains itself and shows its default."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from graytune.client.cli import build_parser

COMMANDS = ("info", "data", "train", "eval", "plot", "demo")


def option_blocks(help_text: str) -> dict:
    """--option -> its help text, from argparse's rendered "options:" section."""
    section = help_text.split("options:\n", 1)[1]
    blocks, name = {}, None
    for line in section.splitlines():
        match = re.match(r"  (-\S+)", line)
        if match:
            name = match.group(1).split(",")[0]
            blocks[name] = line
        elif name:
            blocks[name] += " " + line.strip()
    return blocks


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_a_default(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    blocks = option_blocks(sub.format_help())
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert options and set(blocks) == {"-h"} | {a.option_strings[0] for a in options}
    for action in options:
        block = blocks[action.option_strings[0]]
        words = block.split(None, 2 if action.nargs != 0 else 1)[-1]
        assert len(words) > 15, f"{command} {action.option_strings[0]}: no help"
        if not action.required:
            assert "default" in block, f"{command} {action.option_strings[0]}: no default shown"


def test_train_help_shows_the_real_defaults():
    result = subprocess.run([sys.executable, "-m", "graytune.client.cli", "train", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    blocks = option_blocks(result.stdout)
    for option, default in (("--steps", "100"), ("--lr", "0.001"), ("--wd", "0.0"), ("--seed", "0"),
                            ("--batch-size", "32"), ("--warmup", "10"), ("--pixel-layers", "2"),
                            ("--deep-prompt-depth", "0"), ("--resume", "off")):
        assert f"(default: {default})" in blocks[option], blocks[option]
