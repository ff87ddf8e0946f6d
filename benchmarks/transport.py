"""What graytune's tensor path costs over raw gRPC streaming of the same bytes.

    python benchmarks/transport.py                        # 1, 16 and 64 MB, 7 round trips each
    python benchmarks/transport.py --sizes 1 --reps 3     # toy size (the smoke test)

One echo server in a process of its own, two bidirectional-streaming methods on one port:
- raw: the request is a stream of byte chunks (no protobuf, identity serialisers); the server
  gathers them into one buffer and streams the same number of bytes back in chunks, which the
  client gathers too (each side holds what it received, as the tensor path must);
- tensor: graytune's own path, both ways, as OracleClient and the servicer take it: the tensor
  as serialized chunk messages (`tensor_to_messages`), each read from its bytes on arrival
  (`chunk_of`) into the `TensorAssembler`, a tensor of the same size sent back the same way.
  float32, and bfloat16 on the wire (a float32 tensor cast on send: half the bytes, the
  rounding the wire then costs).
Chunks are graytune's 1 MiB in both. Round trips of the modes are interleaved; medians. Reports
MB/s (bytes up + down over the round trip) and tensor ÷ raw (target ≥ 0.9). Writes
OUT/transport.json and OUT/transport.png.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import torch

from evidence.output import RESULTS, plt, save_results
from graytune import tensor_codec

CHUNK = tensor_codec.DEFAULT_CHUNK_BYTES
LIMITS = [("grpc.max_receive_message_length", 8 * CHUNK), ("grpc.max_send_message_length", 8 * CHUNK)]
identity = lambda b: b  # noqa: E731  raw bytes in, raw bytes out


def raw_echo(requests, context):
    buffer = bytearray()
    for part in requests:  # gather: a real receiver must hold the bytes somewhere
        buffer += part
    view = memoryview(buffer)
    for start in range(0, len(buffer), CHUNK):
        yield bytes(view[start:start + CHUNK])  # one copy per chunk, as tensor_to_messages makes


def tensor_echo(requests, context):
    assembler = tensor_codec.TensorAssembler()
    for message in requests:
        assembler.add(tensor_codec.chunk_of(message))
    for name, tensor in assembler.finish().items():
        yield from tensor_codec.tensor_to_messages(name, tensor, CHUNK)


def serve() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=LIMITS)
    handlers = {"Raw": grpc.stream_stream_rpc_method_handler(raw_echo, identity, identity),
                "Tensor": grpc.stream_stream_rpc_method_handler(tensor_echo, identity, identity)}
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

    def raw_round_trip(self, payload: bytes) -> bytearray:
        parts = (payload[s:s + CHUNK] for s in range(0, len(payload), CHUNK))
        received = bytearray()
        for part in self.raw(parts):  # gathered, as the tensor path gathers its tensor
            received += part
        return received

    def tensor_round_trip(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        assembler = tensor_codec.TensorAssembler()
        for message in self.tensor(tensor_codec.tensor_to_messages("x", tensor, CHUNK, dtype)):
            assembler.add(tensor_codec.chunk_of(message))
        return assembler.finish()["x"]


def measure(client: Client, megabytes: int, reps: int) -> dict:
    tensor = torch.randn(megabytes * (1 << 20) // 4)  # (N,) float32
    payload = tensor.numpy().tobytes()
    modes = {"raw": lambda: client.raw_round_trip(payload),
             "tensor float32": lambda: client.tensor_round_trip(tensor, torch.float32),
             "tensor bfloat16": lambda: client.tensor_round_trip(tensor, torch.bfloat16)}
    wire_bytes = {"raw": len(payload), "tensor float32": len(payload), "tensor bfloat16": len(payload) // 2}
    seconds = {m: [] for m in modes}
    for rep in range(reps + 1):  # the first round warms the connection up and is dropped
        for mode, call in modes.items():
            start = time.perf_counter()
            call()
            if rep:
                seconds[mode].append(time.perf_counter() - start)
    medians = {m: statistics.median(s) for m, s in seconds.items()}
    return {"megabytes": megabytes, "reps": reps, "seconds": seconds,
            "MB_per_s": {m: 2 * wire_bytes[m] / medians[m] / 1e6 for m in modes},
            "tensor_float32_over_raw": medians["raw"] / medians["tensor float32"],
            "bfloat16_time_over_float32": medians["tensor bfloat16"] / medians["tensor float32"]}


def figure(results: list) -> "plt.Figure":
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sizes = [r["megabytes"] for r in results]
    for mode in results[0]["MB_per_s"]:
        ax.plot(sizes, [r["MB_per_s"][mode] for r in results], marker="o", label=mode)
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
    p.add_argument("--reps", type=int, default=7, help="interleaved round trips per size and mode")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve()
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()
        if not port:
            raise SystemExit(f"the echo server exited ({server.wait()}) before listening")
        client = Client(f"127.0.0.1:{port}")
        grpc.channel_ready_future(client.channel).result(timeout=60)
        results = [measure(client, int(mb), args.reps) for mb in args.sizes.split(",")]
    finally:
        server.terminate()
        server.wait()
    print(f"{'MB':>4}{'raw MB/s':>10}{'f32 MB/s':>10}{'bf16 MB/s':>11}{'f32 / raw':>11}{'bf16 time / f32':>17}")
    for r in results:
        rate = r["MB_per_s"]
        print(f"{r['megabytes']:>4}{rate['raw']:>10.0f}{rate['tensor float32']:>10.0f}{rate['tensor bfloat16']:>11.0f}"
              f"{r['tensor_float32_over_raw']:>11.3f}{r['bfloat16_time_over_float32']:>17.3f}")
    save_results(args.out, "transport", results, lambda: figure(results))
    print(f"written to {args.out}/transport.{{json,png}}")
    return results


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(0 if main() else 1)
