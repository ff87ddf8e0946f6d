"""Abuse: what a hostile caller's load does to another key's calls, the health check and memory.

    python benchmarks/abuse.py                    # every case, 20 s each
    python benchmarks/abuse.py --seconds 5 --cases baseline,many-streams --out abuse-run

One keyed server on loopback (graytune-tiny; --max-graph-mb 200). For each case a victim key
calls Embed (2 images) in a loop and the health check after each call, while the abuse runs:

- baseline: no abuse;
- reflection: 16 reflection streams with no key, held open (the server allows 4: --reflection-streams);
- slow-senders: 16 Embed streams of a valid key, each a header then 4 bytes every 5 s;
- spent-key: 16 such streams from a key whose budget is 0;
- many-streams: 200 concurrent Embed streams of one key, held open;
- tokenizer: 16 threads sending captions of 4,096 letters without a space;
- graphs: one key's Forward calls without Backward, 64 images each, as fast as they go.

Prints per case the victim's p50/p99 latency, its calls, whether health stayed SERVING, and the
server's resident memory before and after; writes OUT/abuse.json and OUT/abuse.png (--out,
default benchmarks/results).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from graytune.client.transport.local_server import LocalServer, server_command
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

from evidence.memory import status_bytes
from evidence.output import RESULTS, plt, save_results

MIB = 2**20
MIN_CALLS = 5  # the victim's calls per case at least, however short the case
SERVER_ARGS = (
    "--plaintext",
    "--threads",
    "1",
    "--log-level",
    "WARNING",
    "--reflection-streams",
    "4",
    "--max-graph-mb",
    "200",
)


class Abuse:
    """Threads that load the server until `stop` is set."""

    def __init__(self, endpoint: str, secrets: dict[str, str]):
        self.endpoint, self.secrets, self.stop = endpoint, secrets, threading.Event()
        self.threads: list[threading.Thread] = []
        self.channel = grpc.insecure_channel(endpoint)
        self.stub = pb_grpc.GradientOracleStub(self.channel)

    def spawn(self, n: int, fn: Callable[[], None]) -> None:
        for _ in range(n):
            self.threads.append(threading.Thread(target=self._quietly, args=(fn,), daemon=True))
            self.threads[-1].start()

    def _quietly(self, fn) -> None:
        while not self.stop.is_set():
            try:
                fn()
            except (grpc.RpcError, OracleError):
                self.stop.wait(0.05)  # refused: try again, as an abuser would
            except ValueError:  # "Channel closed": the case is over
                return

    def metadata(self, who: str) -> list:
        return [("authorization", f"Bearer {self.secrets[who]}")]

    def trickle(self, who: str) -> None:
        def messages():  # a tensor of 12 KB declared, then sent 4 bytes at a time
            yield pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE))
            yield pb.InputMessage(
                chunk=pb.TensorChunk(name="pixels", dtype=pb.FLOAT32, shape=[1, 3, 32, 32], data=bytes(4))
            )
            while not self.stop.wait(5.0):
                yield pb.InputMessage(chunk=pb.TensorChunk(name="pixels", data=bytes(4)))

        list(self.stub.Embed(messages(), metadata=self.metadata(who), timeout=600))

    def held_open(self) -> None:
        def messages():
            yield pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE))
            self.stop.wait(600)

        list(self.stub.Embed(messages(), metadata=self.metadata("abuser"), timeout=600))

    def reflection(self) -> None:
        def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            self.stop.wait(600)

        list(reflection_pb2_grpc.ServerReflectionStub(self.channel).ServerReflectionInfo(requests(), timeout=600))

    def long_captions(self) -> None:
        with OracleClient(self.endpoint, api_key=self.secrets["abuser"], retries=0) as oracle:
            while not self.stop.is_set():
                try:
                    oracle.embed_texts(["x" * 4096] * 8)
                except OracleError:
                    pass

    def forwards(self) -> None:
        with OracleClient(self.endpoint, api_key=self.secrets["abuser"], retries=0) as oracle:
            while not self.stop.is_set():
                try:
                    oracle.forward(pb.IMAGE, {"pixels": torch.randn(64, 3, 32, 32)})
                except OracleError:
                    pass

    def end(self) -> None:
        self.stop.set()
        self.channel.close()  # ends the held streams
        for t in self.threads:
            t.join(30)


CASES: dict[str, Callable[[Abuse], None]] = {
    "baseline": lambda a: None,
    "reflection": lambda a: a.spawn(16, a.reflection),
    "slow-senders": lambda a: a.spawn(16, lambda: a.trickle("abuser")),
    "spent-key": lambda a: a.spawn(16, lambda: a.trickle("spent")),
    "many-streams": lambda a: a.spawn(200, a.held_open),
    "tokenizer": lambda a: a.spawn(16, a.long_captions),
    "graphs": lambda a: a.spawn(1, a.forwards),
}


def victim(endpoint: str, secret: str, seconds: float) -> dict:
    """The victim's Embed latencies and health answers while the abuse runs."""
    latencies, unhealthy, failures = [], 0, 0
    with (
        OracleClient(endpoint, api_key=secret, retries=0, timeout=30) as oracle,
        grpc.insecure_channel(endpoint) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        until = time.monotonic() + seconds
        while time.monotonic() < until or len(latencies) + failures < MIN_CALLS:
            start = time.perf_counter()
            try:
                oracle.embed_images(torch.randn(2, 3, 32, 32))
                latencies.append(time.perf_counter() - start)
            except OracleError:
                failures += 1
            try:
                serving = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                unhealthy += serving != health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                unhealthy += 1
    quantiles = (
        statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [float("nan")] * 99
    )
    return {
        "calls": len(latencies),
        "failures": failures,
        "unhealthy_checks": unhealthy,
        "p50_ms": 1e3 * quantiles[49],
        "p99_ms": 1e3 * quantiles[98],
    }


def create_key(key_file: Path, *args: str) -> str:
    return subprocess.run(
        server_command() + ["keys", "--file", str(key_file), "create", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="per case (default: %(default)s)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown or args.seconds <= 0:
        p.error(f"unknown cases {unknown}" if unknown else "--seconds must be positive")
    results = {"settings": {"seconds": args.seconds, "server_args": list(SERVER_ARGS)}, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "keys.json"
        secrets = {
            "victim": create_key(key_file, "--tier", "graybox"),
            "abuser": create_key(key_file, "--tier", "graybox", "--budget", "100000000"),
            "spent": create_key(key_file, "--tier", "graybox", "--budget", "0"),
        }
        with LocalServer([*SERVER_ARGS, "--keys", str(key_file)]) as server:
            pid = server.process.pid
            for case in cases:
                before = status_bytes(pid)
                abuse = Abuse(server.endpoint, secrets)
                CASES[case](abuse)
                try:
                    result = victim(server.endpoint, secrets["victim"], args.seconds)
                finally:
                    abuse.end()
                result.update(rss_before_mib=before / MIB, rss_after_mib=status_bytes(pid) / MIB)
                results["cases"][case] = result
                print(
                    f"{case:>13}: victim p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                    f"{result['calls']:5d} calls  {result['failures']} failed  "
                    f"{result['unhealthy_checks']} health checks not SERVING  RSS "
                    f"{result['rss_before_mib']:.0f} -> {result['rss_after_mib']:.0f} MiB",
                    flush=True,
                )
    save_results(args.out, "abuse", results, lambda: draw(results["cases"]))
    failed = any(r["failures"] or r["unhealthy_checks"] for r in results["cases"].values())
    return 1 if failed else 0


def draw(cases: dict[str, dict]) -> plt.Figure:
    fig, (latency, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(cases)
    x = range(len(names))
    latency.bar([i - 0.2 for i in x], [cases[n]["p50_ms"] for n in names], 0.4, label="p50")
    latency.bar([i + 0.2 for i in x], [cases[n]["p99_ms"] for n in names], 0.4, label="p99")
    latency.set(yscale="log", ylabel="victim's Embed latency (ms)", title="another key's calls under abuse")
    memory.bar([i - 0.2 for i in x], [cases[n]["rss_before_mib"] for n in names], 0.4, label="before")
    memory.bar([i + 0.2 for i in x], [cases[n]["rss_after_mib"] for n in names], 0.4, label="after")
    memory.set(ylabel="server RSS (MiB)", title="server memory, before and after each case")
    for ax in (latency, memory):
        ax.set_xticks(list(x), names, rotation=30, ha="right")
        ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
