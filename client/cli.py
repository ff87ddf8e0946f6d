"""graytune: fine-tune a vision-language model you cannot see, through its owner's oracle.

    graytune info  --endpoint HOST:PORT
    graytune data digits --out data/digits
    graytune train --endpoint HOST:PORT --train-data data/digits/train.csv \\
                   --val-data data/digits/val.csv --output-dir runs/digits [--resume]
    graytune train --task classify --shots 16 --train-data data/digits/train_labels.csv \\
                   --val-data data/digits/val_labels.csv --output-dir runs/digits-16shot
    graytune eval  --endpoint HOST:PORT --adapter runs/digits/adapter --val-data data/digits/val.csv
    graytune embed --adapter runs/digits/adapter --images data/digits/images --out emb.npy
    graytune predict --adapter runs/digits-16shot/adapter --images data/digits/images --out classes.csv
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
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import torch  # noqa: E402

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_ENDPOINT = os.environ.get("GRAYTUNE_ENDPOINT", "127.0.0.1:50051")
INTERRUPTED, BROKEN_PIPE = 128 + signal.SIGINT, 128 + signal.SIGPIPE  # as a shell reports them


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return f"{text} (default: {'none' if action.default is None else '%(default)s'})"


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help="the oracle's host:port (default: $GRAYTUNE_ENDPOINT or %(default)s); "
                        "the API key is read from $GRAYTUNE_API_KEY")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    p.add_argument("--reconnect-timeout", type=float, default=300.0,
                   help="seconds a call waits for an unavailable server to come back, e.g. from a restart")
    p.add_argument("--wire-dtype", choices=WIRE_DTYPES, default="float32",
                   help="precision of tensors on the wire; half precision halves the bytes")
    p.add_argument("--tls", action="store_true", help="connect with TLS (implied by the --tls-* files)")
    p.add_argument("--tls-ca", help="CA certificate that signed the server's (default: system roots)")
    p.add_argument("--tls-cert", help="this client's certificate, for mutual TLS (default: none, no client certificate)")
    p.add_argument("--tls-key", help="this client's private key, for mutual TLS (default: none)")
    p.add_argument("--tls-server-name",
                   help="verify the server certificate against this host name, when --endpoint is "
                        "an address the certificate does not name (default: the endpoint's host)")


TASKS = ("retrieval", "classify", "sketch", "video")
# The task flags, by the task they belong to (None: their default, when not given).
TASK_FLAGS = {"templates": "classify", "classnames": "classify", "shots": "classify", "precision_at": "sketch",
              "frames": "video", "pooling": "video"}
METHODS = {"dga": "graybox-dga", "lga": "graybox-lga", "linear-probe": "linear-probe", "craft": "craft"}


def paper_queries(shots: int) -> int:
    """CraFT's budgets: 8,000 queries at 8 or 16 shots (or all images), 4,000 at 2 or 4, 2,000 at 1."""
    return 8000 if shots == 0 or shots >= 8 else 4000 if shots >= 2 else 2000


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS,
                   help="retrieval: image-caption files; classify: labelled images (few-shot); "
                        "sketch: sketches and photos by category; video: video-caption files "
                        "(default: retrieval, or the task --adapter was trained for)")
    p.add_argument("--csv-img-key", default="filepath", help="column (or JSONL key) of image paths")
    p.add_argument("--csv-caption-key", default="title", help="column (or JSONL key) of captions (retrieval)")
    p.add_argument("--csv-label-key", default="label", help="column (or JSONL key) of labels (classify)")
    p.add_argument("--csv-separator", default="\t",
                   help="column separator of .csv/.tsv files (default: a tab, as OpenCLIP)")
    p.add_argument("--templates", help="classify: prompt templates, one per line with {} for the class "
                                       "name; a class's embedding is their mean (default: 'a photo of a {}.')")
    p.add_argument("--classnames", help="classify: class names, one per line, line i naming class i "
                                        "(default: the class folders' or labels' names, sorted)")
    p.add_argument("--precision-at", type=int, help="sketch: K of P@K, clamped to the gallery size (default: 100)")
    p.add_argument("--frames", type=int, help="video: frames per clip, sampled uniformly (default: 8)")


def _inference_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--adapter", help="adapter directory (default: none, the backbone alone)")
    p.add_argument("--out", required=True, help=f"output file of {out}; written whole or not at all")
    p.add_argument("--batch-size", type=int, default=64, help="items per call")
    p.add_argument("--csv-img-key", default="filepath", help="column (or JSONL key) of paths, for a table")
    p.add_argument("--csv-separator", default="\t", help="column separator of .csv/.tsv files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    import graytune
    parser = argparse.ArgumentParser(prog="graytune", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"graytune {graytune.__version__} (protocol {graytune.PROTOCOL_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True)

    info = _parser(sub, "info", "what the oracle serves and what this caller may do")
    _connection_args(info)

    data = _parser(sub, "data", "build a demo data set")
    data.add_argument("name", choices=["digits", "digit-videos"],
                      help="digits: images for retrieval, classify and sketch; digit-videos: clips for video (needs graytune[video])")
    data.add_argument("--out", default="data/digits", help="folder to write it to")

    train = _parser(sub, "train", "train adapters through the oracle, for a task")
    _connection_args(train)
    _data_args(train)
    train.add_argument("--method", choices=[*METHODS, "zero-shot"], default="dga",
                       help="dga: input and output adapters (tier graybox); lga: also deep prompts "
                            "(graybox-plus); linear-probe: a classifier on frozen image embeddings "
                            "(classify; any tier); craft: black-box prompt search + a refinement "
                            "module (classify; any tier, no gradient); zero-shot is `graytune eval` "
                            "without --adapter")
    train.add_argument("--adapters", choices=("both", "input", "output"), default="both",
                       help="which adapters learn; output only needs no gradients (any tier)")
    train.add_argument("--pooling", choices=("mean", "attention"),
                       help="video: how frame embeddings become a clip's; attention learns a query, "
                            "saved with the adapters (default: mean)")
    train.add_argument("--train-data", required=True,
                       help="retrieval: CSV/TSV/JSONL of image path + caption; classify: a folder of "
                            "class folders, or CSV/TSV/JSONL of image path + label")
    train.add_argument("--shots", type=int,
                       help="classify: training images drawn per class (0: all); without --val-data "
                            "the rest are evaluated (default: 16)")
    train.add_argument("--val-data", help="evaluated at step 0 (zero-shot) and every --eval-every steps (default: none, no evaluation; classify: the images not drawn as shots)")
    train.add_argument("--output-dir", required=True,
                       help="run directory: metrics.jsonl, config.json, checkpoints/, adapter/")
    train.add_argument("--steps", type=int, help="optimiser steps in all; --method craft takes --queries instead (default: 100)")
    train.add_argument("--batch-size", type=int, default=32, help="image-caption pairs per step")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW")
    train.add_argument("--input-lr", type=float,
                       help="peak learning rate of the input modules (pixel adapters, text prompt, deep "
                            "prompts), which often want a smaller one than the output adapters (default: --lr)")
    train.add_argument("--wd", type=float, default=0.0, help="weight decay of AdamW")
    train.add_argument("--warmup", type=int, default=10,
                       help="steps of linear warm-up before the cosine decay")
    train.add_argument("--eval-every", type=int, default=50, help="steps between evaluations on --val-data")
    train.add_argument("--save-every", type=int, default=50, help="steps between checkpoints")
    train.add_argument("--seed", type=int, default=0, help="seeds the data order and the prompt init")
    train.add_argument("--report-to", choices=("tensorboard",), action="append", default=[],
                       help="also write the metrics as TensorBoard event files to OUTPUT_DIR/tensorboard "
                            "(needs graytune[tensorboard]) (default: metrics.jsonl only)")
    train.add_argument("--workers", type=int, default=2,
                       help="DataLoader processes decoding and resizing batches ahead of the step (0: none)")
    train.add_argument("--extra-tokens", type=int, default=1, help="learnable prompt tokens after start-of-text (0: none)")
    train.add_argument("--pixel-layers", type=int, default=2, help="convolutions of the pixel adapter")
    train.add_argument("--pixel-channels", type=int, default=8, help="channels between the pixel adapter's convolutions")
    train.add_argument("--deep-prompt-depth", type=int, default=0,
                       help="deep prompts at the first N blocks of each tower (tier graybox-plus; "
                            "0: none, or with --method lga every block the key is offered)")
    train.add_argument("--deep-prompt-tokens", type=int, default=4, help="deep prompt tokens per block")
    craft = train.add_argument_group("--method craft (CraFT: steps are CMA-ES generations)")
    craft.add_argument("--queries", type=int, help="query budget: candidate prompts scored on the few-shot "
                                                    "set, --popsize per generation (default: the paper's, "
                                                    "8000 at 8-16 shots, 4000 at 2-4, 2000 at 1)")
    craft.add_argument("--popsize", type=int, default=40, help="CMA-ES population: candidates per generation")
    craft.add_argument("--sigma", type=float, default=1.0, help="CMA-ES's initial step size")
    craft.add_argument("--bound", type=float, default=0.0, help="bound |z_i| of the search (0: none)")
    craft.add_argument("--intrinsic-dim", type=int, default=512, help="dimension d of the searched vector z")
    craft.add_argument("--kl-weight", type=float, default=0.1,
                       help="lambda of the prediction-consistent KL terms of both modules")
    craft.add_argument("--prompt-template", default="a photo of a",
                       help="the server's template whose context tokens are searched (`graytune info` lists them)")
    restart = train.add_mutually_exclusive_group()
    restart.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    restart.add_argument("--overwrite", action="store_true",
                         help="delete the run already in --output-dir and start over")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = _parser(sub, "eval", "a task's metrics of trained adapters (or of the backbone alone)")
    _connection_args(ev)
    _data_args(ev)
    ev.add_argument("--val-data", required=True, help="data in the task's format (see train --train-data)")
    ev.add_argument("--adapter", help="adapter directory; its task, class names and templates are "
                                      "used (default: none, zero-shot: the backbone alone)")
    ev.add_argument("--batch-size", type=int, default=64, help="images or captions per call")

    emb = _parser(sub, "embed", "embeddings of images, texts or videos through the oracle and adapters")
    _connection_args(emb)
    corpus = emb.add_mutually_exclusive_group(required=True)
    corpus.add_argument("--images", help="a folder of images (ids: paths below it) or a CSV/TSV/JSONL of image paths")
    corpus.add_argument("--texts", help="a UTF-8 file of texts, one per line (ids: line numbers)")
    corpus.add_argument("--videos", help="a folder of video files or frame folders, or a CSV/TSV/JSONL of them")
    _inference_args(emb, "embeddings: .npy (fields id, embedding) or .safetensors (ids in the metadata)")
    emb.add_argument("--frames", type=int, help="videos: frames per clip (default: the adapters' training "
                                                "value, else 8)")
    emb.add_argument("--domain", choices=("sketch", "photo"), help="sketch-retrieval adapters: the images' domain")

    pred = _parser(sub, "predict", "the class of each image, with class probabilities, as CSV")
    _connection_args(pred)
    pred.add_argument("--images", required=True,
                      help="a folder of images (ids: paths below it) or a CSV/TSV/JSONL of image paths")
    _inference_args(pred, "predictions, .csv: id, prediction, score, one column per class")
    pred.add_argument("--templates", help="without --adapter: prompt templates file (default: 'a photo of a {}.')")
    pred.add_argument("--classnames", help="without --adapter (then required): the class names file, one per line")

    plot = _parser(sub, "plot", "loss, learning rate and recall curves of runs, as an image")
    plot.add_argument("run_dirs", nargs="+", type=Path, help="`graytune train` output directories")
    plot.add_argument("--out", type=Path, help="image file (default: RUN_DIR/metrics.png for one run; needed for several)")

    demo = _parser(sub, "demo", "local server + digits + a short gray-box fine-tune")
    demo.add_argument("--steps", type=int, default=100, help="training steps")
    demo.add_argument("--workdir", default="graytune-demo", help="folder for the data and the run")
    demo.add_argument("--wire-dtype", choices=WIRE_DTYPES, default="float32",
                      help="precision of tensors on the wire")
    return parser


def _client(args):
    """API key from $GRAYTUNE_API_KEY (never a flag: it would show in the process list)."""
    from graytune.client.transport.oracle_client import OracleClient, tls_channel_credentials
    tls = args.tls or args.tls_ca or args.tls_cert or args.tls_key
    credentials = tls_channel_credentials(args.tls_ca, args.tls_cert, args.tls_key) if tls else None
    return OracleClient(args.endpoint, timeout=args.timeout, reconnect_timeout=args.reconnect_timeout,
                        wire_dtype=WIRE_DTYPES[args.wire_dtype], credentials=credentials,
                        tls_server_name=args.tls_server_name)


def cmd_info(args) -> None:
    from google.protobuf.json_format import MessageToDict
    with _client(args) as oracle:
        print(json.dumps(MessageToDict(oracle.describe()), indent=2))


def cmd_data(args) -> None:
    if args.name == "digit-videos":
        from graytune.client.data.digit_videos import write_digit_videos
        paths = write_digit_videos(args.out)
    else:
        from graytune.client.data.digits import write_digits
        paths = write_digits(args.out)
    print("\n".join(f"{split + ':':14} {path}" for split, path in paths.items()))


def task_options(args) -> dict:
    """The flags given of --task's own; a flag of another task is refused."""
    given = {name: getattr(args, name) for name in TASK_FLAGS if getattr(args, name, None) is not None}
    task = args.task or "retrieval"
    misplaced = [f"--{name.replace('_', '-')} (a flag of --task {TASK_FLAGS[name]})"
                 for name in given if TASK_FLAGS[name] != task]
    if misplaced:
        raise ValueError(f"--task {task} has no {', '.join(misplaced)}")
    return given


def train_config(args):
    from graytune.client.training.loop import TrainConfig
    if args.method == "zero-shot":
        raise ValueError("--method zero-shot trains nothing: evaluate the backbone alone with "
                         "`graytune eval` without --adapter")
    steps, craft, adapters = args.steps or 100, {}, {
        "extra_tokens": args.extra_tokens, "pixel_layers": args.pixel_layers, "pixel_channels": args.pixel_channels,
        "deep_prompt_depth": args.deep_prompt_depth, "deep_prompt_tokens": args.deep_prompt_tokens,
        "adapters": args.adapters}
    if args.method == "craft":
        if args.steps is not None:
            raise ValueError("--method craft: give --queries (generations = queries / --popsize), not --steps")
        queries = args.queries or paper_queries(16 if args.shots is None else args.shots)
        if queries < args.popsize:
            raise ValueError(f"--queries {queries}: less than one generation of --popsize {args.popsize}")
        steps = queries // args.popsize
        craft = {"popsize": args.popsize, "sigma": args.sigma, "bound": args.bound, "kl_weight": args.kl_weight}
        adapters = {"craft": {"template": args.prompt_template, "intrinsic_dim": args.intrinsic_dim,
                              "projection_seed": args.seed}}
    elif args.queries is not None:
        raise ValueError("--queries: a flag of --method craft")
    if args.input_lr is not None and (args.method in ("craft", "linear-probe") or args.adapters == "output"):
        raise ValueError(f"--input-lr: --method {args.method} --adapters {args.adapters} trains no input modules")
    return TrainConfig(
        train_data=args.train_data, val_data=args.val_data, output_dir=args.output_dir,
        steps=steps, batch_size=args.batch_size, lr=args.lr, input_lr=args.input_lr, weight_decay=args.wd,
        warmup=args.warmup, eval_every=args.eval_every, save_every=args.save_every, seed=args.seed,
        workers=args.workers, report_to=tuple(args.report_to), csv_img_key=args.csv_img_key, csv_caption_key=args.csv_caption_key,
        csv_label_key=args.csv_label_key, csv_separator=args.csv_separator,
        task=args.task or "retrieval", method=METHODS[args.method], task_options=task_options(args),
        adapters=adapters, craft=craft)


def cmd_train(args) -> None:
    from graytune.client.training.loop import train
    with _client(args) as oracle:
        result = train(oracle, train_config(args), resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress)
    print(json.dumps(result, indent=2, sort_keys=True))


def csv_format(args) -> dict:
    return {"img_key": args.csv_img_key, "caption_key": args.csv_caption_key,
            "label_key": args.csv_label_key, "separator": args.csv_separator}


def cmd_eval(args) -> None:
    from graytune.client.inference.run import evaluate
    with _client(args) as oracle:
        metrics = evaluate(oracle, args.val_data, args.adapter, args.task, csv_format(args),
                           task_options(args), args.batch_size)
    print(json.dumps(metrics, indent=2, sort_keys=True))


def cmd_embed(args) -> None:
    from graytune.client.inference.run import embed
    kind = "images" if args.images else "texts" if args.texts else "videos"
    with _client(args) as oracle:
        embed(oracle, args.adapter, kind, args.images or args.texts or args.videos, args.out, args.batch_size,
              frames=args.frames, domain=args.domain, progress=not args.no_progress,
              img_key=args.csv_img_key, separator=args.csv_separator)
    print(args.out)


def cmd_predict(args) -> None:
    from graytune.client.inference.run import predict
    options = {k: v for k, v in (("templates", args.templates), ("classnames", args.classnames)) if v}
    if args.adapter and options:
        raise ValueError("--templates/--classnames: the adapters carry their own; only without --adapter")
    with _client(args) as oracle:
        predict(oracle, args.adapter, args.images, args.out, args.batch_size,
                classify_options=None if args.adapter else options, progress=not args.no_progress,
                img_key=args.csv_img_key, separator=args.csv_separator)
    print(args.out)


def cmd_plot(args) -> None:
    from graytune.client.plot import plot_runs
    if args.out is None and len(args.run_dirs) > 1:
        raise ValueError("--out: needed when plotting several runs")
    print(plot_runs(args.run_dirs, args.out or args.run_dirs[0] / "metrics.png"))


def cmd_demo(args) -> None:
    from graytune.client.demo import run_demo
    run_demo(args.workdir, args.steps, WIRE_DTYPES[args.wire_dtype])


COMMANDS = {"info": cmd_info, "data": cmd_data, "train": cmd_train, "eval": cmd_eval, "embed": cmd_embed,
            "predict": cmd_predict, "plot": cmd_plot, "demo": cmd_demo}


def _where_the_run_stopped(args) -> Optional[str]:
    """For `train` once its run directory exists: the last step done and how to continue."""
    if args.command != "train":
        return None
    from graytune.client.training.run_dir import RunDir
    run = RunDir(args.output_dir)
    return f"after step {run.last_step()}; {run.resume_hint()}" if run.in_use() else None


def main(argv=None) -> None:
    try:
        args = build_parser().parse_args(argv)
        run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, rather than at exit
    except BrokenPipeError:  # `graytune eval ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(BROKEN_PIPE)


def run(args) -> None:
    """Runs one command; an expected failure ends in one line on stderr and exit code 1."""
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("graytune").setLevel(logging.INFO)  # data checks, run config, server waits
    from graytune.client.adapters.graybox import BackboneMismatch
    from graytune.client.transport.oracle_client import OracleError
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        stopped = _where_the_run_stopped(args)
        where = f" {stopped}" if stopped else (" before the first step" if args.command == "train" else "")
        print(f"graytune {args.command}: interrupted{where}", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except OracleError as e:
        print(f"graytune {args.command}: error: {e}", file=sys.stderr)
        stopped = _where_the_run_stopped(args)
        if stopped:
            print(f"graytune {args.command}: the run stopped {stopped}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:
        raise
    except (OSError, ValueError, ModuleNotFoundError, BackboneMismatch) as e:  # bad input, refusals
        print(f"graytune {args.command}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
