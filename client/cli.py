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
    graytune plot  runs/digits     # runs/digits/metrics.png: training curves, val metrics
    graytune demo  # local server + digits + a short fine-tune, before/after metrics
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from graytune.client.data.tables import CsvFormat
from graytune.client.methods.registry import METHODS
from graytune.client.options import add_options, flag_name, given_flags, option_fields, values
from graytune.client.tasks import TASKS, task_class
from graytune.client.training.loop import TrainConfig, check_data_parallel, train
from graytune.client.transport.oracle_client import IMAGE_WIRES
from graytune.help_format import DefaultsHelpFormatter

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_ENDPOINT = os.environ.get("GRAYTUNE_ENDPOINT", "127.0.0.1:50051")
INTERRUPTED, BROKEN_PIPE = 128 + signal.SIGINT, 128 + signal.SIGPIPE  # as a shell reports them
USAGE = 2  # argparse's exit status for a bad command line


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help="the oracle's host:port (default: $GRAYTUNE_ENDPOINT or %(default)s); "
        "the API key is read from $GRAYTUNE_API_KEY",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    p.add_argument(
        "--reconnect-timeout",
        type=float,
        default=300.0,
        help="seconds a call waits for an unavailable server to come back, e.g. from a restart",
    )
    p.add_argument(
        "--wire-dtype",
        choices=WIRE_DTYPES,
        default="float32",
        help="precision of tensors on the wire; half precision halves the bytes",
    )
    p.add_argument(
        "--wire",
        choices=IMAGE_WIRES,
        default="auto",
        help="how images behind a pixel adapter travel: frugal (uint8 pixels and the adapter's parameters, "
        "the adapter run on the server: about a quarter of the bytes up, its parameters' gradients back "
        "instead of the images'), pixels (the adapter's float output), auto (frugal where the server, "
        "the key and the pixels allow it)",
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS (implied by the --tls-* files)")
    p.add_argument("--tls-ca", help="CA certificate that signed the server's (default: system roots)")
    p.add_argument(
        "--tls-cert", help="this client's certificate, for mutual TLS (default: none, no client certificate)"
    )
    p.add_argument("--tls-key", help="this client's private key, for mutual TLS (default: none)")
    p.add_argument(
        "--tls-server-name",
        help="verify the server certificate against this host name, when --endpoint is "
        "an address the certificate does not name (default: the endpoint's host)",
    )


def _chosen(argv: list[str], flag: str, choices: Collection[str], default: str) -> str:
    """The value `argv` gives `flag` if it is one of `choices`, else `default`: train's and eval's
    flags depend on their --method and --task, so these are read before the parser is built."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument(flag, dest="value")
    try:
        value = pre.parse_known_args(argv)[0].value
    except argparse.ArgumentError:  # `--method` with no value: the full parser says so
        return default
    return value if value in choices else default


def _task_args(p: argparse.ArgumentParser, task: str, help: str) -> None:
    p.add_argument("--task", choices=TASKS, help=help)
    add_options(p, CsvFormat)
    if option_fields(task_class(task).Options):
        add_options(p.add_argument_group(f"--task {task} options"), task_class(task).Options)


def _foreign_flags(argv: list[str], kind: str, chosen: str, owners: dict[str, type]) -> str | None:
    """One line refusing the flags of `argv` that belong to another --`kind` than `chosen`."""
    own = {flag_name(f.name) for f in option_fields(owners[chosen])}
    foreign = {}
    for flag in given_flags(argv):
        if flag not in own:
            others = [name for name, cls in owners.items() if flag in {flag_name(f.name) for f in option_fields(cls)}]
            if others:
                foreign[flag] = others
    if not foreign:
        return None
    which = ", ".join(f"{flag} (a flag of --{kind} {', '.join(names)})" for flag, names in foreign.items())
    return f"--{kind} {chosen} has no {which}; it takes {', '.join(sorted(own)) or 'no flags of its own'}"


def _inference_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--adapter", help="adapter directory (default: none, the backbone alone)")
    p.add_argument("--out", required=True, help=f"output file of {out}; written whole or not at all")
    p.add_argument("--batch-size", type=int, default=64, help="items per call")
    add_options(p, CsvFormat, only=("csv_img_key", "csv_separator"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=DefaultsHelpFormatter)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser for `argv`: train and eval take the flags of the --method and --task it names
    (dga and retrieval when it names none)."""
    import graytune

    argv = list(argv)
    method, task = _chosen(argv, "--method", METHODS, "dga"), _chosen(argv, "--task", TASKS, "retrieval")
    parser = argparse.ArgumentParser(prog="graytune", description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument(
        "--version", action="version", version=f"graytune {graytune.__version__} (protocol {graytune.PROTOCOL_VERSION})"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    info = _parser(sub, "info", "what the oracle serves and what this caller may do")
    _connection_args(info)

    data = _parser(sub, "data", "build a demo data set")
    data.add_argument(
        "name",
        choices=["digits", "digit-videos"],
        help="digits: images for retrieval, classify and sketch; digit-videos: clips for video (needs graytune[video])",
    )
    data.add_argument("--out", default="data/digits", help="folder to write it to")

    train = _parser(sub, "train", "train adapters through the oracle, for a task")
    train.epilog = (
        f"Shown: the options of --method {method} and --task {task}; "
        "`graytune train --method M --task T --help` shows another's."
    )
    _connection_args(train)
    _task_args(
        train,
        task,
        "retrieval: image-caption files; classify: labelled images (few-shot); sketch: "
        "sketches and photos by category; video: video-caption files (default: retrieval)",
    )
    add_options(train, TrainConfig)
    train.add_argument(
        "--method",
        choices=[*METHODS, "zero-shot"],
        default="dga",
        help="; ".join(f"{name}: {m.help}" for name, m in METHODS.items())
        + "; zero-shot is `graytune eval` without --adapter",
    )
    add_options(train.add_argument_group(f"--method {method} options"), METHODS[method].options)
    restart = train.add_mutually_exclusive_group()
    restart.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    restart.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --output-dir and start over"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train data-parallel in this many processes (gloo, as under torchrun): each sends its shard of every "
        "batch; the same run and charge as one process (--method dga or lga; default: %(default)s)",
    )

    ev = _parser(sub, "eval", "a task's metrics of trained adapters (or of the backbone alone)")
    _connection_args(ev)
    _task_args(ev, task, "the task of the data (default: retrieval, or the task --adapter was trained for)")
    ev.add_argument("--val-data", required=True, help="data in the task's format (see train --train-data)")
    ev.add_argument(
        "--adapter",
        help="adapter directory; its task, class names and templates are "
        "used (default: none, zero-shot: the backbone alone)",
    )
    ev.add_argument("--batch-size", type=int, default=64, help="images or captions per call")

    emb = _parser(sub, "embed", "embeddings of images, texts or videos through the oracle and adapters")
    _connection_args(emb)
    corpus = emb.add_mutually_exclusive_group(required=True)
    corpus.add_argument("--images", help="a folder of images (ids: paths below it) or a CSV/TSV/JSONL of image paths")
    corpus.add_argument("--texts", help="a UTF-8 file of texts, one per line (ids: line numbers)")
    corpus.add_argument("--videos", help="a folder of video files or frame folders, or a CSV/TSV/JSONL of them")
    _inference_args(emb, "embeddings: .npy (fields id, embedding) or .safetensors (ids in the metadata)")
    emb.add_argument(
        "--frames", type=int, help="videos: frames per clip (default: the adapters' training value, else 8)"
    )
    emb.add_argument("--domain", choices=("sketch", "photo"), help="sketch-retrieval adapters: the images' domain")

    pred = _parser(sub, "predict", "the class of each image, with class probabilities, as CSV")
    _connection_args(pred)
    pred.add_argument(
        "--images", required=True, help="a folder of images (ids: paths below it) or a CSV/TSV/JSONL of image paths"
    )
    _inference_args(pred, "predictions, .csv: id, prediction, score, one column per class")
    pred.add_argument("--templates", help="without --adapter: prompt templates file (default: 'a photo of a {}.')")
    pred.add_argument("--classnames", help="without --adapter (then required): the class names file, one per line")

    plot = _parser(sub, "plot", "training curves and validation metrics of runs (any task or method), as an image")
    plot.add_argument("run_dirs", nargs="+", type=Path, help="`graytune train` output directories")
    plot.add_argument(
        "--out", type=Path, help="image file (default: RUN_DIR/metrics.png for one run; needed for several)"
    )

    demo = _parser(sub, "demo", "local server + digits + a short gray-box fine-tune")
    demo.add_argument("--steps", type=int, default=100, help="training steps")
    demo.add_argument("--workdir", default="graytune-demo", help="folder for the data and the run")
    demo.add_argument("--wire-dtype", choices=WIRE_DTYPES, default="float32", help="precision of tensors on the wire")
    return parser


def _client(args):
    """API key from $GRAYTUNE_API_KEY (never a flag: it would show in the process list)."""
    from graytune.client.transport.oracle_client import OracleClient, tls_channel_credentials

    tls = args.tls or args.tls_ca or args.tls_cert or args.tls_key
    credentials = tls_channel_credentials(args.tls_ca, args.tls_cert, args.tls_key) if tls else None
    return OracleClient(
        args.endpoint,
        timeout=args.timeout,
        reconnect_timeout=args.reconnect_timeout,
        wire_dtype=WIRE_DTYPES[args.wire_dtype],
        credentials=credentials,
        tls_server_name=args.tls_server_name,
        image_wire=args.wire,
    )


def cmd_info(args) -> None:
    from google.protobuf.json_format import MessageToDict

    with _client(args) as oracle:
        print(json.dumps(MessageToDict(oracle.describe()), indent=2))


def cmd_data(args) -> None:
    if args.name == "digit-videos":
        from graytune.client.demo.digit_videos import write_digit_videos

        paths = write_digit_videos(args.out)
    else:
        from graytune.client.demo.digits import write_digits

        paths = write_digits(args.out)
    print("\n".join(f"{split + ':':14} {path}" for split, path in paths.items()))


def train_config(args: argparse.Namespace) -> TrainConfig:
    if args.method == "zero-shot":
        raise ValueError(
            "--method zero-shot trains nothing: evaluate the backbone alone with `graytune eval` without --adapter"
        )
    task = args.task or "retrieval"
    return values(
        TrainConfig,
        args,
        task=task,
        method=args.method,
        csv=values(CsvFormat, args),
        task_options=dataclasses.asdict(values(task_class(task).Options, args)),
        options=values(METHODS[args.method].options, args),
    )


def cmd_train(args) -> None:
    if args.nproc < 1:
        raise ValueError(f"--nproc {args.nproc}: give 1 or more processes")
    config = train_config(args)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        check_data_parallel(config, args.nproc)  # refused once, here, rather than by each process
        from graytune.client.methods.launch import launch

        sys.exit(launch(args.nproc, without_nproc(args.argv)))
    with _client(args) as oracle:
        result = train(oracle, config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # one result, not one per process
        print(json.dumps(result, indent=2, sort_keys=True))


def without_nproc(argv: Sequence[str]) -> list[str]:
    """`argv` less its `--nproc N`: what each of the N processes runs."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--nproc":
            skip = True
        elif not word.startswith("--nproc="):
            kept.append(word)
    return kept


def cmd_eval(args) -> None:
    from graytune.client.inference.run import evaluate

    with _client(args) as oracle:
        task = task_class(args.task or "retrieval")
        metrics = evaluate(
            oracle,
            args.val_data,
            args.adapter,
            args.task,
            values(CsvFormat, args),
            dataclasses.asdict(values(task.Options, args)),
            args.batch_size,
        )
    print(json.dumps(metrics, indent=2, sort_keys=True))


def cmd_embed(args) -> None:
    from graytune.client.inference.run import embed

    kind = "images" if args.images else "texts" if args.texts else "videos"
    with _client(args) as oracle:
        embed(
            oracle,
            args.adapter,
            kind,
            args.images or args.texts or args.videos,
            args.out,
            args.batch_size,
            frames=args.frames,
            domain=args.domain,
            progress=not args.no_progress,
            img_key=args.csv_img_key,
            separator=args.csv_separator,
        )
    print(args.out)


def cmd_predict(args) -> None:
    from graytune.client.inference.run import predict

    options = {k: v for k, v in (("templates", args.templates), ("classnames", args.classnames)) if v}
    if args.adapter and options:
        raise ValueError("--templates/--classnames: the adapters carry their own; only without --adapter")
    with _client(args) as oracle:
        predict(
            oracle,
            args.adapter,
            args.images,
            args.out,
            args.batch_size,
            classify_options=None if args.adapter else options,
            progress=not args.no_progress,
            img_key=args.csv_img_key,
            separator=args.csv_separator,
        )
    print(args.out)


def cmd_plot(args) -> None:
    from graytune.client.plot import plot_runs

    if args.out is None and len(args.run_dirs) > 1:
        raise ValueError("--out: needed when plotting several runs")
    print(plot_runs(args.run_dirs, args.out or args.run_dirs[0] / "metrics.png"))


def cmd_demo(args) -> None:
    from graytune.client.demo.run import run_demo

    run_demo(args.workdir, args.steps, WIRE_DTYPES[args.wire_dtype])


COMMANDS = {
    "info": cmd_info,
    "data": cmd_data,
    "train": cmd_train,
    "eval": cmd_eval,
    "embed": cmd_embed,
    "predict": cmd_predict,
    "plot": cmd_plot,
    "demo": cmd_demo,
}


def _where_the_run_stopped(args) -> str | None:
    """For `train` once its run directory exists: the last step done and how to continue."""
    if args.command != "train":
        return None
    from graytune.client.training.run_dir import RunDir

    run = RunDir(args.output_dir)
    return f"after step {run.last_step()}; {run.resume_hint()}" if run.in_use() else None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed flags; a flag of another --method or --task than the chosen one is refused in
    one line (exit 2, as argparse's own refusals), before argparse would call it unknown."""
    argv = list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in ("train", "eval"):
        task = _chosen(argv, "--task", TASKS, "retrieval")
        refusals = [_foreign_flags(argv, "task", task, {name: task_class(name).Options for name in TASKS})]
        method = _chosen(argv, "--method", [*METHODS, "zero-shot"], "dga")
        if command == "train" and method in METHODS:
            refusals.insert(0, _foreign_flags(argv, "method", method, {n: m.options for n, m in METHODS.items()}))
        for refusal in filter(None, refusals):
            print(f"graytune {command}: error: {refusal}", file=sys.stderr)
            sys.exit(USAGE)
    return build_parser(argv).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
        args.argv = argv  # `train --nproc N` starts the same command in N processes
        run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, rather than at exit
    except BrokenPipeError:  # `graytune eval ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(BROKEN_PIPE)


def run(args) -> None:
    """Runs one command; an expected failure ends in one line on stderr and exit code 1. Of a
    run in several processes (--nproc), process 0 speaks for the run: the others log nothing
    below an error, and say only what may have happened to them alone (a failed call)."""
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # INFO: data checks, run config, server waits
    logging.getLogger("graytune").setLevel(logging.INFO if rank == "0" else logging.ERROR)
    from graytune.client.data.tables import DataError
    from graytune.client.methods.base import BackboneMismatch
    from graytune.client.transport.oracle_client import OracleError

    alone = False  # whether the failure may be this process's alone
    try:
        COMMANDS[args.command](args)
        return
    except KeyboardInterrupt:
        stopped = _where_the_run_stopped(args)
        where = f" {stopped}" if stopped else (" before the first step" if args.command == "train" else "")
        lines, code = [f"interrupted{where}"], INTERRUPTED
    except (OracleError, DataError) as e:  # mid-run too: the run can be resumed
        stopped = _where_the_run_stopped(args)
        lines, code = [f"error: {e}", *([f"the run stopped {stopped}"] if stopped else [])], 1
        alone = isinstance(e, OracleError)
    except BrokenPipeError:
        raise
    except (OSError, ValueError, ModuleNotFoundError, BackboneMismatch) as e:  # bad input, refusals
        lines, code = [f"error: {e}"], 1
    if rank == "0":
        print("\n".join(f"graytune {args.command}: {line}" for line in lines), file=sys.stderr)
    elif alone:
        print(f"graytune {args.command} (process {rank}): {lines[0]}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
