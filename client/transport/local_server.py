"""Starts `graytune-server` as a child process on a free port, for demos, tests and benchmarks.

    with LocalServer(["--model", "graytune-tiny"]) as server:
        with OracleClient(server.endpoint) as oracle: ...

Readiness is the standard gRPC health check, never a fixed sleep; the process is ended by its
id with SIGTERM (the server drains its calls), then SIGKILL if it does not stop (`kill()`: at once).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence

import grpc

from graytune.client.transport.oracle_client import OracleClient

LISTENING = re.compile(r"graytune-server listening on (\S+):(\d+)")


def server_command() -> list[str]:
    exe = shutil.which("graytune-server", path=os.path.dirname(sys.executable)) or shutil.which("graytune-server")
    if exe is None:
        raise FileNotFoundError("graytune-server not found; install graytune[server]")
    return [exe]


class LocalServer:
    def __init__(
        self,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        startup_timeout: float = 900.0,
        credentials: grpc.ChannelCredentials | None = None,
        tls_server_name: str | None = None,
        command: Sequence[str] | None = None,
        log_file: str | None = None,
    ):
        """`command`: the server executable (default: this environment's graytune-server).
        `log_file`: where every line the server prints is also appended (`output` keeps the last 200).
        `credentials` (and `tls_server_name`, the name its certificate holds): what the
        readiness check connects with when the server serves TLS.
        `startup_timeout` is generous: building the demo model the first time took 100 s on a
        busy 2-core machine and over 120 s on a busier one, and a server that dies is noticed at
        once (its output ends), so only a hung start waits this long."""
        self.command = list(command) if command else server_command()
        self.args = ["--host", "127.0.0.1", "--port", "0", *args]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.startup_timeout = startup_timeout
        self.credentials, self.tls_server_name = credentials, tls_server_name
        self.process: subprocess.Popen | None = None
        self.endpoint = ""
        self.output: deque = deque(maxlen=200)  # the server's last lines, for error messages
        self.log_file = log_file

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalServer:
        self.process = subprocess.Popen(
            self.command + self.args, env=self.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        found = threading.Event()
        threading.Thread(target=self._read_output, args=(found,), daemon=True).start()
        if not found.wait(self.startup_timeout) or not self.endpoint:
            self.stop()
            raise RuntimeError("graytune-server did not start:\n" + "\n".join(self.output))
        with OracleClient(self.endpoint, credentials=self.credentials, tls_server_name=self.tls_server_name) as oracle:
            oracle.wait_ready(self.startup_timeout)
        return self

    def _read_output(self, found: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None  # start: its output piped here
        log = open(self.log_file, "a", buffering=1) if self.log_file else None  # line-buffered
        for line in self.process.stdout:
            self.output.append(line.rstrip())
            if log:
                log.write(line)
            match = LISTENING.search(line)
            if match and not self.endpoint:
                self.endpoint = f"{match.group(1)}:{match.group(2)}"
                found.set()
        if log:
            log.close()
        found.set()  # the process ended without listening

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL, as a crash would end it: no draining; returns the exit code."""
        assert self.process is not None  # `start` made it
        self.process.kill()
        return self.process.wait()
