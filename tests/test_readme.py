"""The README's Python example runs as written, against a real server and real images."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from graytune.client.demo.digits import write_digits

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    text = README.read_text()
    start = text.index("The same from Python")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_the_python_example_trains_a_step_and_saves_adapters(server, tmp_path):
    write_digits(tmp_path / "data" / "digits")  # what `graytune data digits --out data/digits` writes
    code = python_example()
    assert '"127.0.0.1:50051"' in code
    code = code.replace('"127.0.0.1:50051"', repr(server.endpoint))
    backward = "    loss.backward()"
    assert backward in code
    code = code.replace(
        backward,
        backward + "\n    assert model.pixel_adapter.convs[0].weight.grad.abs().sum() > 0"
        "\n    assert model.text_prompt.shift.grad.abs().sum() > 0",
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "my-task" / "adapter" / "adapters.safetensors").is_file()


def test_the_one_command_per_task_runs_as_written(server, digits, tmp_path):
    """Each `graytune train --task …` line of the README, for two steps against a real server."""
    import json
    import shlex
    import shutil

    from graytune.client.demo.digit_videos import write_digit_videos

    text = README.read_text()
    block = re.search(r"```sh\n(.*?)```", text[text.index("One command per task") :], re.S).group(1)
    commands = [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]
    assert [c[1] for c in commands] == ["data", "data", "train", "train", "train", "train"]
    shutil.copytree(Path(digits["train"]).parent, tmp_path / "data" / "digits")
    write_digit_videos(tmp_path / "data" / "digits")
    tasks = set()
    for command in commands[2:]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "graytune.client.cli",
                *command[1:],
                "--endpoint",
                server.endpoint,
                "--steps",
                "2",
                "--eval-every",
                "2",
                "--save-every",
                "2",
                "--batch-size",
                "8",
                "--no-progress",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, (command, result.stderr[-2000:])
        run = json.loads(
            (tmp_path / command[command.index("--output-dir") + 1] / "metrics.jsonl").read_text().splitlines()[0]
        )
        tasks.add(run["task"])
    assert tasks == {"retrieval", "classify", "sketch", "video"}
