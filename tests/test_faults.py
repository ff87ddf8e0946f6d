"""Faults across processes, judged by where they leave things: a server SIGKILLed mid-call and
restarted on its port, a trainer SIGKILLed mid-checkpoint and mid-step.

Adapters are compared for exact equality. Float32 tensors cross the wire unchanged; every
server runs the same seeded weights on one CPU thread (--threads 1), so the same inputs give the
same bits in any server process; one trainer's calls are never merged with another's; and the
data order is a function of (seed, step). A step recomputed after a restart or a resume is the
same arithmetic on the same numbers as the step of an uninterrupted run.
"""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graytune.client import cli
from graytune.client.methods import adapter_dir
from graytune.client.training import checkpoint
from graytune.client.training.loop import train
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.v1 import oracle_pb2 as pb

from helpers import SERVER_ARGS, calls_on, cli_command, free_port, scrape, train_args, wait_until

SWEEP_SECONDS = 1.0  # how often the server drops expired graphs (GraphStore.run_sweeper)


def train_argv(digits, run_dir: Path, *extra: str) -> list:
    return train_args(
        digits["train"], run_dir, "--steps", "6", "--batch-size", "16", "--save-every", "2", "--no-progress", *extra
    )


def cli_train(endpoint: str, digits, run_dir: Path, *extra: str) -> list:
    return cli_command(*train_argv(digits, run_dir, "--endpoint", endpoint, *extra))


def train_config(digits, run_dir: Path):
    """The config `cli_train` runs, for training in this process."""
    return cli.train_config(cli.build_parser().parse_args(train_argv(digits, run_dir)))


def adapters(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapters.safetensors"))


def assert_same_adapters(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


@pytest.fixture(scope="module")
def uninterrupted(server, digits, tmp_path_factory):
    """The adapters of the run every faulty run must end with, trained in this process."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    with OracleClient(server.endpoint) as oracle:
        train(oracle, train_config(digits, run_dir), progress=False)
    return adapters(run_dir)


# -- the server dies mid-call and comes back on its port ---------------------------------------
class Restarting:
    """A server on a fixed port; `crash()` SIGKILLs it and starts another in the background."""

    def __init__(self):
        self.args = [*SERVER_ARGS, "--port", str(free_port())]
        self.first = LocalServer(self.args).start()
        self.endpoint = self.first.endpoint
        self.second: Future | None = None
        self._starter = ThreadPoolExecutor(1)

    def crash(self) -> None:
        assert self.first.kill() == -signal.SIGKILL
        self.second = self._starter.submit(LocalServer(self.args).start)

    def close(self) -> None:
        self.first.stop()
        if self.second is not None and self.second.exception() is None:
            self.second.result().stop()
        self._starter.shutdown()


def interrupt(
    oracle: OracleClient,
    method: str,
    matches: Callable[[object], bool],
    sent: int | None,
    action: Callable[[], None],
    nth: int = 3,
) -> None:
    """Makes the `nth` `method` call of `oracle` whose header `matches` run `action` once `sent`
    of its messages (None: all of them) have gone out, before its stream ends. gRPC asks a
    request iterator for a message only when the previous one is sent; the server answers only
    after reading the whole stream (servicer.read_stream), so it cannot have answered yet."""
    rpc, seen = getattr(oracle.stub, method), itertools.count(1)
    message_type = pb.BackwardMessage if method == "Backward" else pb.InputMessage

    def call(requests, **kwargs):
        messages = list(requests)  # serialized: the header, then the chunks
        if not (matches(message_type.FromString(messages[0]).header) and next(seen) == nth):
            return rpc(iter(messages), **kwargs)
        cut = len(messages) if sent is None else sent

        def stream():
            yield from messages[:cut]
            action()
            yield from messages[cut:]

        return rpc(stream(), **kwargs)

    setattr(oracle.stub, method, call)


is_text = lambda header: header.tower == pb.TEXT
is_image = lambda header: header.tower == pb.IMAGE
any_call = lambda header: True


@pytest.mark.parametrize(
    "method, matches, sent, recomputed",
    [
        # A text Forward. The step's image Forward runs at the same time: if it was answered
        # before the crash, its graph died with the server, and that Backward is answered ABORTED
        # by the new server and recomputed; if it was still in flight, it is simply sent again.
        ("Forward", is_text, None, (0, 1)),
        # A Backward, sent again after the restart: ABORTED, as is the other tower's Backward.
        ("Backward", any_call, None, (2,)),
        # An image Forward after its header and first chunk of pixels (16 KiB chunks: 12 of them);
        # the text Forward beside it, as above.
        ("Forward", is_image, 2, (0, 1)),
    ],
    ids=["mid-Forward", "mid-Backward", "mid-upload"],
)
def test_training_rides_out_a_server_restart(
    method, matches, sent, recomputed, uninterrupted, digits, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="graytune.client")
    server = Restarting()
    try:
        with OracleClient(server.endpoint, chunk_bytes=16 << 10) as oracle:  # waits up to 300 s
            interrupt(oracle, method, matches, sent, server.crash)
            train(oracle, train_config(digits, tmp_path), progress=False)
        assert server.second is not None, "the server was never killed"
        restarted = server.second.result()
    finally:
        server.close()
    assert_same_adapters(adapters(tmp_path), uninterrupted)
    waits = [r.getMessage() for r in caplog.records if r.name == "graytune.client"]
    # A step's image and text calls run at once and both wait: the outage is told once.
    gone = [w for w in waits if w.startswith(f"{method}: server {server.endpoint} unavailable (")]
    back = [w for w in waits if w.startswith(f"{method}: server {server.endpoint} is back after ")]
    assert len(gone) == len(back) == 1 and len(waits) == 2, waits
    assert all("waiting up to 300 s for it to come back" in w for w in gone)
    assert calls_on(restarted, "ABORTED") in recomputed


# -- the trainer dies mid-checkpoint -----------------------------------------------------------
# The CLI, with torch.save writing half of the training state of step argv[1]'s checkpoint and
# then stopping the process (SIGSTOP): a moment mid-write, reached every time.
HALF_WRITTEN = """
import io, os, signal, sys
import torch
from graytune.client import cli

stop_at, save = int(sys.argv[1]), torch.save

def save_stopping_halfway(state, path):
    data = io.BytesIO()
    save(state, data)
    data, half = data.getvalue(), len(data.getvalue()) // 2
    with open(path, "wb") as f:
        f.write(data[:half])
        f.flush()
        if state["step"] == stop_at:
            os.kill(os.getpid(), signal.SIGSTOP)
        f.write(data[half:])

torch.save = save_stopping_halfway
cli.main(sys.argv[2:])
"""


def process_state(pid: int) -> str:
    """R, S, T (stopped), Z, ... from /proc/PID/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_trainer_killed_mid_checkpoint_resumes_to_the_same_result(server, digits, uninterrupted, tmp_path):
    run = [sys.executable, "-c", HALF_WRITTEN, "4", *train_argv(digits, tmp_path, "--endpoint", server.endpoint)]
    trainer = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(
            lambda: trainer.poll() is not None or process_state(trainer.pid) == "T",
            300,
            "the trainer stopping in its checkpoint of step 4",
        )
        assert trainer.poll() is None, f"the trainer ended before step 4: {trainer.communicate()[1]}"
        writing = tmp_path / "checkpoints" / f".step_0000004.tmp-{trainer.pid}"
        assert sorted(p.name for p in writing.iterdir()) == [
            adapter_dir.ADAPTER_CONFIG,
            adapter_dir.ADAPTER_WEIGHTS,
            checkpoint.TRAINING_STATE,
        ]
        with pytest.raises(RuntimeError, match="zip archive"):  # half a file
            torch.load(writing / checkpoint.TRAINING_STATE, weights_only=True)
        trainer.kill()
        assert trainer.wait() == -signal.SIGKILL
    finally:
        trainer.kill()
    previous = checkpoint.latest_checkpoint(tmp_path)
    assert previous == tmp_path / "checkpoints" / "step_0000002"
    assert checkpoint.load_training_state(previous)["step"] == 2

    subprocess.run(cli_train(server.endpoint, digits, tmp_path, "--resume"), check=True, capture_output=True)
    assert_same_adapters(adapters(tmp_path), uninterrupted)
    assert not writing.exists()  # the dead writer's half checkpoint was cleared


# -- the trainer dies mid-step -----------------------------------------------------------------
def test_graphs_of_a_killed_trainer_are_freed_after_the_ttl(digits, tmp_path):
    # Short, but longer than a step on a loaded host: graphs caught held must outlive the kill.
    ttl, metrics_port = 4.0, free_port()
    args = [*SERVER_ARGS, "--handle-ttl", str(ttl), "--metrics-port", str(metrics_port)]
    with LocalServer(args) as server:

        def held():
            metrics = scrape(metrics_port)
            return tuple(metrics[(name, frozenset())] for name in ("graytune_graphs_held", "graytune_graph_bytes_held"))

        baseline = held()
        trainer = subprocess.Popen(
            cli_train(server.endpoint, digits, tmp_path, "--steps", "100000"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def stopped_holding_graphs() -> bool:
            """Stops the trainer; true if the server then holds graphs for it, else resumes it."""
            trainer.send_signal(signal.SIGSTOP)
            wait_until(lambda: process_state(trainer.pid) == "T", 30, "the trainer stopping")
            if held()[1] > baseline[1]:
                return True
            trainer.send_signal(signal.SIGCONT)
            return False

        try:
            wait_until(stopped_holding_graphs, 300, "the trainer caught between Forward and Backward")
            trainer.kill()
            assert trainer.wait() == -signal.SIGKILL
            killed = time.monotonic()
            assert held()[1] > baseline[1], "its graphs outlive the trainer until their TTL"
            wait_until(lambda: held() == baseline, 60, "the dead trainer's graphs freed")
            freed_after = time.monotonic() - killed
        finally:
            trainer.kill()
    # Each graph was stored before the kill (or by a Forward running then, ~0.1 s): it expires
    # at most `ttl` after it, and the sweeper finds it within SWEEP_SECONDS; 1 s for scheduling.
    assert freed_after <= ttl + SWEEP_SECONDS + 1.0
