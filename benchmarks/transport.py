"""What graytune's tensor path costs over raw gRPC streaming of the same bytes.

    python benchmarks/transport.py                        # 1, 16 and 64 MB: 3 runs of 15 round trips
    python benchmarks/transport.py --sizes 1 --reps 2 --runs 2    # toy size (the smoke test)

One echo server in a process of its own, two bidirectional-streaming methods on one port:
- raw: the request is a stream of byte chunks (no protobuf, identity serialisers); the server
  gathers them into one buffer and streams the same number of bytes back in chunks, which the
  client gathers too (each side holds what it received, as the tensor path must). Each side
  sends from the memory it holds (the client: the tensor's), copying each chunk once into the
  `bytes` gRPC takes, as `tensor_to_messages` does;
- tensor: graytune's own path, both ways, as OracleClient and the servicer take it: the tensor
  as serialized chunk messages (`tensor_to_messages`), each read from its bytes on arrival
  (`chunk_of`) into the `TensorAssembler`, a tensor of the same size sent back the same way.
  float32, and bfloat16 on the wire (a float32 tensor cast on send: half the bytes, the
  rounding the wire then costs).
Chunks are graytune's 1 MiB in both. Round trips of the modes are interleaved; medians per run,
several runs each with a fresh server (runs of one setup differ by ±10% here, so one run's
ratio is not a measurement). Reports MB/s (bytes up + down over the round trip) and tensor ÷ raw
(target ≥ 0.9) per run and their median. Writes OUT/transport.json and OUT/transport.png.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import torch

from graytune import tensor_codec
from graytune.openmp import wait_passively

from evidence.output import RESULTS, plt, save_results

CHUNK = tensor_codec.DEFAULT_CHUNK_BYTES
LIMITS = [("grpc.max_receive_message_length", 8 * CHUNK), ("grpc.max_send_message_length", 8 * CHUNK)]
identity = lambda b: b  # noqa: E731  raw bytes in, raw bytes out


def raw_chunks(buffer) -> Iterator[bytes]:
    """`buffer`'s bytes in chunks, each copied once (as tensor_to_messages copies them)."""
    view = memoryview(buffer).cast("B")
    for start in range(0, len(view), CHUNK):
        yield bytes(view[start : start + CHUNK])


def raw_echo(requests, context):
    buffer = bytearray()
    for part in requests:  # gather: a real receiver must hold the bytes somewhere
        buffer += part
    yield from raw_chunks(buffer)


def tensor_echo(requests, context):
    assembler = tensor_codec.TensorAssembler()
    for message in requests:
        assembler.add(tensor_codec.chunk_of(message))
    for name, tensor in assembler.finish().items():
        yield from tensor_codec.tensor_to_messages(name, tensor, CHUNK)


def serve() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=LIMITS)
    handlers = {
        "Raw": grpc.stream_stream_rpc_method_handler(raw_echo, identity, identity),
        "Tensor": grpc.stream_stream_rpc_method_handler(tensor_echo, identity, identity),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)  # the parent reads it: listening from here on
    server.wait_for_termination()


class Client:
    def __init__(self, endpoint: str):
        self.channel = grpc.insecure_channel(endpoint, options=LIMITS)
        self.raw = self.channel.stream_stream("/bench.Echo/Raw", identity, identity)
        self.tensor = self.channel.stream_stream("/bench.Echo/Tensor", identity, identity)

    def raw_round_trip(self, tensor: torch.Tensor) -> bytearray:
        received = bytearray()
        for part in self.raw(raw_chunks(tensor.numpy())):  # gathered, as the tensor path gathers its tensor
            received += part
        return received

    def tensor_round_trip(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        assembler = tensor_codec.TensorAssembler()
        for message in self.tensor(tensor_codec.tensor_to_messages("x", tensor, CHUNK, dtype)):
            assembler.add(tensor_codec.chunk_of(message))
        return assembler.finish()["x"]


def measure(client: Client, megabytes: int, reps: int) -> dict:
    tensor = torch.randn(megabytes * (1 << 20) // 4)  # (N,) float32
    modes = {
        "raw": lambda: client.raw_round_trip(tensor),
        "tensor float32": lambda: client.tensor_round_trip(tensor, torch.float32),
        "tensor bfloat16": lambda: client.tensor_round_trip(tensor, torch.bfloat16),
    }
    nbytes = tensor.numel() * tensor.element_size()
    wire_bytes = {"raw": nbytes, "tensor float32": nbytes, "tensor bfloat16": nbytes // 2}
    if bytes(client.raw_round_trip(tensor)) != tensor.numpy().tobytes() or not torch.equal(
        client.tensor_round_trip(tensor, torch.float32), tensor
    ):
        raise SystemExit(f"{megabytes} MB: an echo came back different from what was sent")
    seconds = {m: [] for m in modes}
    for rep in range(reps + 1):  # the first round warms the connection up and is dropped
        for mode, call in modes.items():
            start = time.perf_counter()
            call()
            if rep:
                seconds[mode].append(time.perf_counter() - start)
    medians = {m: statistics.median(s) for m, s in seconds.items()}
    return {
        "megabytes": megabytes,
        "reps": reps,
        "seconds": seconds,
        "MB_per_s": {m: 2 * wire_bytes[m] / medians[m] / 1e6 for m in modes},
        "tensor_float32_over_raw": medians["raw"] / medians["tensor float32"],
        "bfloat16_time_over_float32": medians["tensor bfloat16"] / medians["tensor float32"],
    }


RATIOS = ("tensor_float32_over_raw", "bfloat16_time_over_float32")


def one_run(sizes: list[int], reps: int) -> list[dict]:
    """`measure` for each size against a fresh echo server in a process of its own."""
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()
        if not port:
            raise SystemExit(f"the echo server exited ({server.wait()}) before listening")
        client = Client(f"127.0.0.1:{port}")
        grpc.channel_ready_future(client.channel).result(timeout=60)
        return [measure(client, mb, reps) for mb in sizes]
    finally:
        server.terminate()
        server.wait()


def across_runs(runs: list[dict]) -> dict:
    """One size's runs (each its own server): per mode the runs' median MB/s; per ratio, each
    run's value and their spread."""
    out = {
        "megabytes": runs[0]["megabytes"],
        "runs": runs,
        "MB_per_s": {m: statistics.median(r["MB_per_s"][m] for r in runs) for m in runs[0]["MB_per_s"]},
    }
    for key in RATIOS:
        values = [r[key] for r in runs]
        out[key] = {"per_run": values, "median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def figure(results: list) -> plt.Figure:
    """MB/s per mode, one dot per run, the line through the runs' medians."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sizes = [r["megabytes"] for r in results]
    for i, mode in enumerate(results[0]["MB_per_s"]):
        rates = [[run["MB_per_s"][mode] for run in r["runs"]] for r in results]
        ax.plot(sizes, [r["MB_per_s"][mode] for r in results], marker="o", color=f"C{i}", label=mode)
        for size, xs in zip(sizes, rates):
            ax.scatter([size] * len(xs), xs, s=10, color=f"C{i}", alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("tensor size (MB, float32)")
    ax.set_ylabel("MB/s on the wire (up + down)")
    ax.set_title("echo round trip over loopback gRPC")
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,16,64", help="tensor sizes in MB (float32)")
    p.add_argument("--reps", type=int, default=15, help="interleaved round trips per size, mode and run")
    p.add_argument("--runs", type=int, default=3, help="runs, each with a fresh echo server")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve()
    sizes = [int(mb) for mb in args.sizes.split(",")]
    runs = [one_run(sizes, args.reps) for _ in range(args.runs)]  # runs[i][j]: run i, size j
    results = [across_runs([run[j] for run in runs]) for j in range(len(sizes))]
    print(f"{'MB':>4}{'raw MB/s':>10}{'f32 MB/s':>10}{'bf16 MB/s':>11}   f32 / raw: median (runs)   bf16 time / f32")
    for r in results:
        rate, ratio, bf16 = r["MB_per_s"], r["tensor_float32_over_raw"], r["bfloat16_time_over_float32"]
        print(
            f"{r['megabytes']:>4}{rate['raw']:>10.0f}{rate['tensor float32']:>10.0f}{rate['tensor bfloat16']:>11.0f}"
            f"   {ratio['median']:.3f} ({' '.join(f'{x:.3f}' for x in ratio['per_run'])})"
            f"   {bf16['median']:.3f}"
        )
    save_results(args.out, "transport", results, lambda: figure(results))
    print(f"written to {args.out}/transport.{{json,png}}")
    return results


if __name__ == "__main__":
    wait_passively()
    sys.exit(0 if main() else 1)
