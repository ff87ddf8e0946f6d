"""graytune: fine-tune a vision-language model you cannot see, through its owner's oracle.

    graytune info  --endpoint HOST:PORT
    graytune data digits --out data/digits
    graytune train --endpoint HOST:PORT --train-data data/digits/train.csv \\
                   --val-data data/digits/val.csv --output-dir runs/digits [--resume]
    graytune eval  --endpoint HOST:PORT --adapter runs/digits/adapter --val-data data/digits/val.csv
    graytune plot  runs/digits     # runs/digits/metrics.png: loss, learning rate, recall curves
    graytune demo  # local server + digits + a short fine-tune, before/after metrics
"""
from __future__ import annotations

import os

# This process mostly waits on the server; idle OpenMP threads must sleep, not spin on the
# cores the server computes on (measured 2-5% of server compute on a shared 2-core host).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_ENDPOINT = os.environ.get("GRAYTUNE_ENDPOINT", "127.0.0.1:50051")


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help="the oracle's host:port (default: $GRAYTUNE_ENDPOINT or %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    p.add_argument("--reconnect-timeout", type=float, default=300.0,
                   help="seconds a call waits for an unavailable server to come back, e.g. from a "
                        "restart (default: %(default)g)")
    p.add_argument("--wire-dtype", choices=WIRE_DTYPES, default="float32",
                   help="precision of tensors on the wire; half precision halves the bytes")
    p.add_argument("--tls", action="store_true", help="connect with TLS (implied by the --tls-* files)")
    p.add_argument("--tls-ca", help="CA certificate that signed the server's (default: system roots)")
    p.add_argument("--tls-cert", help="this client's certificate, for mutual TLS")
    p.add_argument("--tls-key", help="this client's private key, for mutual TLS")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv-img-key", default="filepath")
    p.add_argument("--csv-caption-key", default="title")
    p.add_argument("--csv-separator", default="\t")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graytune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="what the oracle serves and what this caller may do")
    _connection_args(info)

    data = sub.add_parser("data", help="build a demo data set")
    data.add_argument("name", choices=["digits"])
    data.add_argument("--out", default="data/digits")

    train = sub.add_parser("train", help="train gray-box adapters for text-image retrieval")
    _connection_args(train)
    _data_args(train)
    train.add_argument("--train-data", required=True, help="CSV/TSV/JSONL of image path + caption")
    train.add_argument("--val-data", help="evaluated every --eval-every steps")
    train.add_argument("--output-dir", required=True, help="run directory: checkpoints, adapter, metrics")
    train.add_argument("--steps", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--wd", type=float, default=0.0, help="weight decay")
    train.add_argument("--warmup", type=int, default=10)
    train.add_argument("--eval-every", type=int, default=50)
    train.add_argument("--save-every", type=int, default=50)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--extra-tokens", type=int, default=1, help="extra prompt tokens (0: none)")
    train.add_argument("--pixel-layers", type=int, default=2)
    train.add_argument("--pixel-channels", type=int, default=8)
    train.add_argument("--deep-prompt-depth", type=int, default=0,
                       help="deep prompts at the first N blocks of each tower (tier graybox-plus; 0: none)")
    train.add_argument("--deep-prompt-tokens", type=int, default=4, help="deep prompt tokens per block")
    train.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    train.add_argument("--no-progress", action="store_true")

    ev = sub.add_parser("eval", help="retrieval metrics of an adapter (or of the backbone alone)")
    _connection_args(ev)
    _data_args(ev)
    ev.add_argument("--val-data", required=True)
    ev.add_argument("--adapter", help="adapter directory; omit for zero-shot")
    ev.add_argument("--batch-size", type=int, default=64)

    plot = sub.add_parser("plot", help="loss, learning rate and recall curves of runs, as an image")
    plot.add_argument("run_dirs", nargs="+", type=Path, help="`graytune train` output directories")
    plot.add_argument("--out", type=Path, help="image file (default: RUN_DIR/metrics.png for one run)")

    demo = sub.add_parser("demo", help="local server + digits + a short gray-box fine-tune")
    demo.add_argument("--steps", type=int, default=100)
    demo.add_argument("--workdir", default="graytune-demo")
    demo.add_argument("--wire-dtype", choices=WIRE_DTYPES, default="float32")
    return parser


def _client(args):
    """API key from $GRAYTUNE_API_KEY (never a flag: it would show in the process list)."""
    from graytune.client.oracle_client import OracleClient, tls_channel_credentials
    tls = args.tls or args.tls_ca or args.tls_cert or args.tls_key
    credentials = tls_channel_credentials(args.tls_ca, args.tls_cert, args.tls_key) if tls else None
    return OracleClient(args.endpoint, timeout=args.timeout, reconnect_timeout=args.reconnect_timeout,
                        wire_dtype=WIRE_DTYPES[args.wire_dtype], credentials=credentials)


def cmd_info(args) -> None:
    from google.protobuf.json_format import MessageToDict
    with _client(args) as oracle:
        print(json.dumps(MessageToDict(oracle.describe()), indent=2))


def cmd_data(args) -> None:
    from graytune.client.digits import write_digits
    paths = write_digits(args.out)
    print(f"train: {paths['train']}\nval:   {paths['val']}")


def train_config(args):
    from graytune.client.train import TrainConfig
    return TrainConfig(
        train_data=args.train_data, val_data=args.val_data, output_dir=args.output_dir,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.wd,
        warmup=args.warmup, eval_every=args.eval_every, save_every=args.save_every, seed=args.seed,
        csv_img_key=args.csv_img_key, csv_caption_key=args.csv_caption_key,
        csv_separator=args.csv_separator,
        adapters={"extra_tokens": args.extra_tokens, "pixel_layers": args.pixel_layers,
                  "pixel_channels": args.pixel_channels, "deep_prompt_depth": args.deep_prompt_depth,
                  "deep_prompt_tokens": args.deep_prompt_tokens})


def cmd_train(args) -> None:
    from graytune.client.train import train
    with _client(args) as oracle:
        result = train(oracle, train_config(args), resume=args.resume, progress=not args.no_progress)
    print(json.dumps(result, indent=2, sort_keys=True))


def cmd_eval(args) -> None:
    from graytune.client.checkpoint import load_adapters
    from graytune.client.train import TrainConfig, evaluate, load_dataset, zero_shot
    cfg = TrainConfig(train_data="", output_dir="", csv_img_key=args.csv_img_key,
                      csv_caption_key=args.csv_caption_key, csv_separator=args.csv_separator)
    with _client(args) as oracle:
        dataset = load_dataset(args.val_data, oracle, cfg)
        if args.adapter:
            metrics = evaluate(load_adapters(args.adapter, oracle), dataset, args.batch_size)
        else:
            metrics = zero_shot(oracle, dataset, args.batch_size)
    print(json.dumps(metrics, indent=2, sort_keys=True))


def cmd_plot(args) -> None:
    from graytune.client.plot import plot_runs
    if args.out is None and len(args.run_dirs) > 1:
        raise ValueError("--out: needed when plotting several runs")
    print(plot_runs(args.run_dirs, args.out or args.run_dirs[0] / "metrics.png"))


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")  # the client's waits for a server
    commands = {"info": cmd_info, "data": cmd_data, "train": cmd_train, "eval": cmd_eval,
                "plot": cmd_plot}
    if args.command == "demo":
        from graytune.client.demo import run_demo
        run_demo(args.workdir, args.steps, WIRE_DTYPES[args.wire_dtype])
        return
    from graytune.client.graybox import BackboneMismatch
    from graytune.client.oracle_client import OracleError
    try:
        commands[args.command](args)
    except (OracleError, BackboneMismatch, FileNotFoundError, ValueError, ModuleNotFoundError) as e:
        print(f"graytune {args.command}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
