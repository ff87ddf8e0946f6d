"""The README's Python example runs as written, against a real server and real images."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from graytune.client.data.digits import write_digits

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
    code = code.replace(backward, backward + "\n    assert model.pixel_adapter.convs[0].weight.grad.abs().sum() > 0"
                                             "\n    assert model.text_prompt.shift.grad.abs().sum() > 0")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "my-task" / "adapter" / "adapters.safetensors").is_file()
