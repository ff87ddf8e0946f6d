"""A run directory holds one run: a rerun is refused, --overwrite starts over, --resume of a
finished run says so; Ctrl-C, a lost server and a closed pipe end in one line, not a traceback."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import termios
from pathlib import Path

from graytune.client.data.batches import batch_indices
from graytune.client.tasks.retrieval.task import RetrievalTask
from graytune.client.transport.local_server import LocalServer

from helpers import SERVER_ARGS, cli_command, records, train_args, train_command, wait_until


def train_cmd(endpoint, digits, run_dir, *extra):
    return train_command(endpoint, digits["train"], run_dir, "--batch-size", "8", *extra)


def train_steps(run_dir: Path) -> list:
    return [r["step"] for r in records(run_dir, "train")]


@contextlib.contextmanager
def sigint_as_in_a_terminal():
    """Starts children with a foreground process's SIGINT. A suite run in the background of a
    script inherits SIGINT ignored, and "ignored" survives exec, so a trainer started from it could
    not be stopped by Ctrl-C; a handler does not survive exec, so with one installed here the child
    starts with the default. (Not `preexec_fn`: Python code between fork and exec can deadlock on a
    lock another thread of this process held at the fork, and Popen then waits forever.)"""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def running(command, run_dir: Path, steps: int, stoppable: bool = False) -> subprocess.Popen:
    """A trainer running `command`, once it logged `steps` training steps (or ended); `stoppable`:
    by SIGINT, as in a terminal."""
    with sigint_as_in_a_terminal() if stoppable else contextlib.nullcontext():
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: run.poll() is not None or len(train_steps(run_dir)) >= steps, 300, f"{steps} training steps")
    return run


def checkpoint_step(run_dir: Path) -> int:
    """The step of the checkpoint `latest` names ("checkpoints/step_0000006")."""
    return int((run_dir / "latest").read_text().strip().rsplit("_", 1)[1])


def test_a_rerun_into_a_used_directory_is_refused_and_overwrite_starts_over(server, digits, tmp_path):
    first = subprocess.run(train_cmd(server.endpoint, digits, tmp_path, "--steps", "2"), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    metrics = (tmp_path / "metrics.jsonl").read_bytes()

    rerun = subprocess.run(train_cmd(server.endpoint, digits, tmp_path, "--steps", "3"), capture_output=True, text=True)
    assert rerun.returncode == 1 and "Traceback" not in rerun.stderr
    assert "already holds a run (a checkpoint at step 2)" in rerun.stderr
    assert "--resume" in rerun.stderr and "--overwrite" in rerun.stderr
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics, "the old run is untouched"

    over = subprocess.run(
        train_cmd(server.endpoint, digits, tmp_path, "--steps", "3", "--overwrite"), capture_output=True, text=True
    )
    assert over.returncode == 0, over.stderr
    assert train_steps(tmp_path) == [1, 2, 3]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["options"]["steps"] == 3


def test_resuming_a_finished_run_prints_its_final_metrics_without_a_call(server, digits, tmp_path):
    done = subprocess.run(
        train_cmd(server.endpoint, digits, tmp_path, "--steps", "2", "--val-data", digits["val"]),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    evaluated = [line for line in done.stderr.splitlines() if line.startswith(("zero-shot: ", "step "))]
    shown = lambda r: ", ".join(f"{k}={r[k]:.3f}" for k in RetrievalTask.headline)
    assert evaluated == [
        f"zero-shot: {shown(records(tmp_path, 'zero_shot')[0])}",  # the first evaluation is printed too
        f"step 2: {shown(records(tmp_path, 'eval')[0])}",
    ]
    # No server at this endpoint: the answer comes from the run directory alone.
    again = subprocess.run(
        train_cmd("127.0.0.1:1", digits, tmp_path, "--steps", "2", "--val-data", digits["val"], "--resume"),
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr
    assert "is complete (step 2 of 2)" in again.stderr
    assert json.loads(again.stdout) == json.loads(done.stdout)
    assert "image_to_text_R@1" in json.loads(again.stdout)


def test_ctrl_c_ends_in_one_line_that_says_how_to_resume(server, digits, tmp_path):
    command = train_cmd(server.endpoint, digits, tmp_path, "--steps", "40", "--save-every", "3")
    run = running(command, tmp_path, 5, stoppable=True)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err
    last, step = err.strip().splitlines()[-1], train_steps(tmp_path)[-1]
    # The step in progress finished and was checkpointed: nothing is lost.
    assert checkpoint_step(tmp_path) == step
    assert (
        last == f"graytune train: interrupted after step {step}; "
        f"resume with --resume (continues from the checkpoint at step {step})"
    )

    resumed = subprocess.run(
        train_cmd(server.endpoint, digits, tmp_path, "--steps", "40", "--save-every", "3", "--resume"),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert train_steps(tmp_path) == list(range(1, 41))


def test_ctrl_c_stops_a_run_in_several_processes_once_with_its_checkpoint(server, digits, tmp_path):
    """Ctrl-C in a terminal reaches every process of its group: `--nproc 2`'s launcher and both
    trainers. Each trainer finishes the step in progress (a first Ctrl-C; the launcher must not
    pass on a second, which means "stop at once"), process 0 checkpoints it and says so, once."""
    command = train_cmd(server.endpoint, digits, tmp_path, "--steps", "400", "--save-every", "50", "--nproc", "2")
    with sigint_as_in_a_terminal():
        run = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
    wait_until(lambda: run.poll() is not None or len(train_steps(tmp_path)) >= 3, 300, "3 training steps")
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 128 + signal.SIGINT, err
    step = train_steps(tmp_path)[-1]
    assert checkpoint_step(tmp_path) == step < 400
    said = [line for line in err.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]  # less log lines
    assert said == [
        f"graytune train: interrupted after step {step}; "
        f"resume with --resume (continues from the checkpoint at step {step})"
    ], err


def test_a_lost_server_ends_in_an_error_that_says_how_to_resume(digits, tmp_path):
    with LocalServer(SERVER_ARGS) as server:
        command = train_cmd(
            server.endpoint, digits, tmp_path, "--steps", "40", "--save-every", "2", "--reconnect-timeout", "1"
        )
        run = running(command, tmp_path, 3)
        server.kill()
        out, err = run.communicate(timeout=300)
    assert run.returncode == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-2].startswith("graytune train: error: ") and "UNAVAILABLE" in lines[-2]
    step = train_steps(tmp_path)[-1]
    assert checkpoint_step(tmp_path) == step // 2 * 2, "a checkpoint is written before the next call"
    assert lines[-1] == (
        f"graytune train: the run stopped after step {step}; resume with --resume "
        f"(continues from the checkpoint at step {step // 2 * 2})"
    )


def test_an_image_unreadable_mid_run_ends_in_one_line_with_the_steps_done_kept(server, digits, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(Path(digits["train"]).parent, data)
    run_dir = tmp_path / "run"
    command = train_cmd(
        server.endpoint, {"train": str(data / "train.csv")}, run_dir, "--steps", "60", "--save-every", "50"
    )
    run = running([*command, "--workers", "2"], run_dir, 2)  # past the check that decodes a sample
    for image in (data / "images").iterdir():
        image.write_bytes(b"not a PNG")  # the batches not yet made, in the workers, fail
    out, err = run.communicate(timeout=300)
    assert run.returncode == 1, err
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    error, stopped = err.strip().splitlines()[-2:]
    assert error.startswith("graytune train: error: ") and f"{data / 'train.csv'}, line " in error, error
    step = train_steps(run_dir)[-1]
    assert 2 <= step < 60 and checkpoint_step(run_dir) == step, "the steps done are checkpointed"
    assert stopped == (
        f"graytune train: the run stopped after step {step}; resume with --resume "
        f"(continues from the checkpoint at step {step})"
    )


def test_skip_unreadable_trains_on_and_counts_what_it_left_out(server, digits, tmp_path):
    """Two --epochs over training data holding three files that are not images: every step is
    taken without them (in the DataLoader workers), each file is logged once although it recurs,
    and the samples left out are counted per step and in the final metrics."""
    data = tmp_path / "data"
    shutil.copytree(Path(digits["train"]).parent, data)
    rows = [line.split("\t")[0] for line in (data / "train.csv").read_text().splitlines()[1:]]
    broken = [1, 2, 700]
    for row in broken:
        (data / rows[row]).write_bytes(b"not a PNG")
    run_dir, batch = tmp_path / "run", 128
    command = train_command(
        server.endpoint, str(data / "train.csv"), run_dir, "--batch-size", str(batch), "--epochs", "2"
    )
    done = subprocess.run([*command, "--skip-unreadable"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = 2 * (len(rows) // batch)
    left_out = [len(set(broken) & set(batch_indices(len(rows), batch, 0, step))) for step in range(steps)]
    assert [r.get("skipped_unreadable") for r in records(run_dir, "train")] == left_out
    assert json.loads(done.stdout)["skipped_unreadable"] == sum(left_out)
    logged = [line.split(": ", 1)[1] for line in done.stderr.splitlines() if "skipped (--skip-unreadable)" in line]
    assert sorted(logged) == sorted(
        f"{data / 'train.csv'}, line {row + 2}: cannot read image {data / rows[row]}: cannot identify image file "
        f"'{data / rows[row]}'"
        for row in broken
        if any(row in batch_indices(len(rows), batch, 0, step) for step in range(steps))
    )
    assert sum(left_out) > len(logged), "a file left out in both epochs, logged once"


def test_the_progress_bar_is_drawn_on_a_terminal_and_not_into_a_log(server, digits, tmp_path):
    command = lambda run: cli_command(
        *train_args(digits["train"], tmp_path / run, "--endpoint", server.endpoint, "--steps", "2", "--batch-size", "8")
    )
    logged = subprocess.run(command("logged"), capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0, logged.stderr
    assert "\r" not in logged.stderr and "100%" not in logged.stderr, "no bar frames in a log file"
    terminal, child_side = pty.openpty()
    fcntl.ioctl(child_side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns: a new pty has 0
    run = subprocess.Popen(command("terminal"), stdout=subprocess.PIPE, stderr=child_side)
    os.close(child_side)
    shown = b""
    with contextlib.suppress(OSError):  # EIO: the trainer closed the terminal
        while chunk := os.read(terminal, 65536):
            shown += chunk
    os.close(terminal)
    assert run.wait(timeout=300) == 0, shown.decode(errors="replace")
    assert re.search(rb"\r[^\n]*100%", shown), "the bar, redrawn in place"


def test_a_closed_pipe_ends_quietly(server, digits):
    run = subprocess.Popen(
        cli_command("eval", "--endpoint", server.endpoint, "--val-data", digits["val"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run.stdout.close()  # `graytune eval ... | head -0`: the reader is gone before the output
    err = run.stderr.read()
    assert run.wait() == 128 + signal.SIGPIPE, err
    assert "Traceback" not in err and "Error" not in err
