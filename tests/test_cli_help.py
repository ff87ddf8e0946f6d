"""Every option of every `graytune` command explains itself and shows its default."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from graytune.client.cli import build_parser
from graytune.client.data.tables import CsvFormat
from graytune.client.methods.registry import METHODS
from graytune.client.options import defaults, flag_name, option_fields
from graytune.client.tasks import TASKS, task_class
from graytune.client.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = ("info", "data", "train", "eval", "embed", "predict", "plot", "demo")


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


def train_help(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "graytune.client.cli", "train", *argv, "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_train_help_shows_the_real_defaults():
    blocks = {**option_blocks(train_help()), **option_blocks(train_help("--method", "lga"))}
    for option, default in (
        ("--steps", "100"),
        ("--lr", "0.001"),
        ("--wd", "0.0"),
        ("--seed", "0"),
        ("--batch-size", "32"),
        ("--warmup", "10"),
        ("--pixel-layers", "2"),
        ("--deep-prompt-depth", "0"),
        ("--resume", "off"),
    ):
        assert f"(default: {default})" in blocks[option], blocks[option]


RUN_FLAGS = {
    "--endpoint",
    "--timeout",
    "--reconnect-timeout",
    "--wire-dtype",
    "--wire",
    "--tls",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
    "--tls-server-name",
    "--task",
    "--csv-img-key",
    "--csv-caption-key",
    "--csv-label-key",
    "--csv-separator",
    "--train-data",
    "--output-dir",
    "--val-data",
    "--batch-size",
    "--eval-every",
    "--save-every",
    "--seed",
    "--report-to",
    "--method",
    "--resume",
    "--overwrite",
    "--no-progress",
    "--nproc",
    "-h",
}


@pytest.mark.parametrize("method", list(METHODS))
def test_train_help_shows_the_chosen_methods_options_only(method):
    shown = set(option_blocks(train_help("--method", method)))
    assert shown - RUN_FLAGS == {flag_name(f.name) for f in option_fields(METHODS[method].options)}


def test_several_processes_are_refused_in_one_line_where_a_method_cannot_shard():
    result = subprocess.run(
        [sys.executable, "-m", "graytune.client.cli", "train", "--train-data", "x.csv", "--output-dir", "run"]
        + ["--method", "craft", "--nproc", "2"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert (
        "a run over 2 processes trains --method dga or lga" in result.stderr and "not --method craft" in result.stderr
    )


@pytest.mark.parametrize(
    "argv, refusal",
    [
        (
            ("--method", "craft", "--wd", "0.1"),
            "--method craft has no --wd (a flag of --method dga, lga, linear-probe)",
        ),
        (("--method", "dga", "--popsize", "10"), "--method dga has no --popsize (a flag of --method craft)"),
        (("--method", "linear-probe", "--deep-prompt-depth", "2"), "--method linear-probe has no --deep-prompt-depth"),
        (("--task", "retrieval", "--shots", "4"), "--task retrieval has no --shots (a flag of --task classify)"),
    ],
)
def test_a_flag_of_another_method_or_task_is_refused_in_one_line(argv, refusal):
    result = subprocess.run(
        [sys.executable, "-m", "graytune.client.cli", "train", "--train-data", "x.csv", "--output-dir", "run", *argv],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and refusal in result.stderr, result.stderr
    assert "it takes" in result.stderr


def test_the_command_lines_defaults_are_the_dataclasses():
    """No default is written twice: each flag's default is its dataclass field's."""
    for method in METHODS:
        for task in TASKS:
            train = subparser(build_parser(["train", "--method", method, "--task", task]), "train")
            parsed = {a.dest: tuple(a.default) if isinstance(a.default, list) else a.default for a in train._actions}
            for cls in (TrainConfig, CsvFormat, METHODS[method].options, task_class(task).Options):
                for name, default in defaults(cls).items():
                    assert parsed[name] == default, (method, task, name)


def subparser(parser, command: str):
    return next(a for a in parser._actions if a.dest == "command").choices[command]


def test_every_server_flag_shows_its_default_and_the_variable_it_is_read_from():
    from graytune.client.transport.local_server import server_command

    shown = subprocess.run([*server_command(), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    body = text.split("options:\n", 1)[1].split("\nenvironment (", 1)[0]
    blocks = {}
    for i, section in enumerate(re.split(r"\n\n(?=\S[^\n]*:\n)", body)):  # options, then each group after a blank line
        blocks.update(option_blocks("options:\n" + (section if i == 0 else section.split("\n", 1)[1])))
    flags = {f for f in blocks if f not in ("-h", "--version")}
    assert {"--host", "--port", "--grace", "--max-batch", "--max-tensor-mb", "--log-level"} <= flags
    for flag in flags:
        words = blocks[flag].split(None, 2)[-1]
        assert len(words) > 15, f"{flag}: no help"
        if not re.search(rf"{flag} [A-Z_{{]", blocks[flag]):  # a switch, off unless given
            continue
        assert "default" in blocks[flag], f"{flag}: no default shown"
    # Every variable the deployments set for the server is one it reads, and says so.
    deployed = set(re.findall(r"GRAYTUNE_[A-Z_]+", (ROOT / "docker-compose.yml").read_text()))
    deployed |= {
        v
        for f in (ROOT / "deploy" / "kubernetes").rglob("*.yaml")
        for v in re.findall(r"GRAYTUNE_[A-Z_]+", f.read_text())
    }
    images = {v for v in deployed if v.endswith("_IMAGE")}  # compose's own: which image runs, not the server's
    health = {"GRAYTUNE_HEALTH_HOST", "GRAYTUNE_HEALTH_TLS_CA", "GRAYTUNE_PORT"}  # `graytune-server health`'s
    listed = set(re.findall(r"GRAYTUNE_[A-Z_]+", text.split("environment (a flag given wins):", 1)[1]))
    assert deployed - images - health <= listed, deployed - images - health - listed
    assert "--keys KEYS" in text and "[$GRAYTUNE_KEYS]" in blocks["--keys"]


def test_the_health_probe_says_what_each_flag_is_and_the_variable_it_defaults_to():
    from graytune.client.transport.local_server import server_command

    shown = subprocess.run([*server_command(), "health", "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    blocks = option_blocks(shown.stdout)
    assert set(blocks) == {"-h", "--address", "--tls-ca", "--tls-cert", "--tls-key", "--tls-host", "--timeout"}
    for flag in set(blocks) - {"-h"}:
        assert "(default: " in blocks[flag] and len(blocks[flag].split(None, 2)[-1]) > 15, blocks[flag]
    for variable in ("GRAYTUNE_PORT", "GRAYTUNE_HEALTH_TLS_CA", "GRAYTUNE_HEALTH_TLS_CERT", "GRAYTUNE_HEALTH_HOST"):
        assert f"${variable}" in shown.stdout, variable
