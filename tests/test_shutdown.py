"""SIGTERM during training: the server drains and exits 0, the trainer waits its
--reconnect-timeout for the server, then stops with a clear error and a loadable checkpoint."""

from __future__ import annotations

import subprocess

from graytune.client.training import checkpoint
from graytune.client.transport.local_server import LocalServer

from helpers import SERVER_ARGS, train_command, wait_until


def test_sigterm_during_training_ends_cleanly(digits, tmp_path):
    server = LocalServer(SERVER_ARGS).start()
    trainer = subprocess.Popen(
        train_command(
            server.endpoint,
            digits["train"],
            tmp_path,
            "--steps",
            "100000",
            "--save-every",
            "2",
            "--batch-size",
            "16",
            "--reconnect-timeout",
            "2",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: checkpoint.latest_checkpoint(tmp_path) is not None, 120, "the trainer's first checkpoint")
        assert server.stop() == 0  # SIGTERM: in-flight calls finish, then a clean exit
        _, stderr = trainer.communicate(timeout=120)
    finally:
        trainer.kill()
        server.stop()
    assert trainer.returncode == 1
    assert "waiting up to 2 s for it to come back" in stderr
    assert "UNAVAILABLE" in stderr and "did not come back within 2 s" in stderr
    assert "Traceback" not in stderr
    state = checkpoint.load_training_state(checkpoint.latest_checkpoint(tmp_path))
    assert state["step"] >= 2
