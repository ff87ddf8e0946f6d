"""Few-shot classification: metrics against hand-computed cases, data errors naming file and
field, and training through the real server (DGA, a linear probe with a blackbox key)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from graytune.client.data.tables import DataError
from graytune.client.tasks.classify.data import few_shot_split, read_classnames, read_labeled, read_templates
from graytune.client.tasks.classify.metrics import classification_metrics, true_class_rank
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient

from helpers import KEYED_ARGS, audit, create_key, graytune, records, task_run_args, wait_until

# -- metrics ---------------------------------------------------------------------------------


def test_top_k_and_per_class_accuracy_by_hand():
    logits = torch.tensor(
        [
            [3.0, 1.0, 2.0, 0.0, -1.0, -2.0],  # label 0: rank 0
            [3.0, 1.0, 2.0, 0.0, -1.0, -2.0],  # label 1: rank 2
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 0: rank 5
            [1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )  # label 1: tied with class 0, rank 0
    labels = torch.tensor([0, 1, 0, 1])
    assert true_class_rank(logits, labels).tolist() == [0, 2, 5, 0]
    metrics = classification_metrics(logits, labels, list("abcdef"))
    assert metrics["top1"] == 0.5 and metrics["top5"] == 0.75
    assert metrics["per_class_accuracy"] == {"a": 0.5, "b": 0.5}  # classes with no image: absent


def test_top5_with_fewer_than_five_classes_is_every_prediction():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    assert classification_metrics(logits, torch.tensor([0]), ["x", "y", "z"])["top5"] == 1.0


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(N, C\) = \(2, 3\)"):
        classification_metrics(torch.zeros(2, 4), torch.tensor([0, 1]), ["a", "b", "c"])


# -- data ------------------------------------------------------------------------------------


def write_folders(root, counts: dict):
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / name / f"{i:03d}.png")
    return str(root)


def test_class_folders_give_sorted_classes_and_labels(tmp_path):
    root = write_folders(tmp_path / "data", {"golden_retriever": 2, "cat": 3})
    (tmp_path / "data" / "notes.txt").write_text("not a class")
    images, classes = read_labeled(root)
    assert classes == ["cat", "golden_retriever"]
    assert [(os.path.basename(i.path), i.label) for i in images] == [
        ("000.png", 0),
        ("001.png", 0),
        ("002.png", 0),
        ("000.png", 1),
        ("001.png", 1),
    ]


def test_labels_as_names_or_indices_of_a_classnames_file(tmp_path):
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    (tmp_path / "data.csv").write_text("filepath\tlabel\na.png\tdog\nb.png\t0\n")
    images, classes = read_labeled(str(tmp_path / "data.csv"), read_classnames(str(tmp_path / "names.txt")))
    assert classes == ["cat", "dog"] and [i.label for i in images] == [1, 0]
    assert images[0].where.endswith("data.csv, line 2")


@pytest.mark.parametrize(
    "row, message",
    [
        ("c.png\tbird", r"data\.csv, line 3: unknown label 'bird': not one of the 2 class names, nor an index below 2"),
        ("c.png\t2", r"data\.csv, line 3: unknown label '2'"),
    ],
)
def test_an_unknown_label_names_its_file_and_line(tmp_path, row, message):
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    (tmp_path / "data.csv").write_text(f"filepath\tlabel\na.png\tdog\n{row}\n")
    with pytest.raises(DataError, match=message):
        read_labeled(str(tmp_path / "data.csv"), read_classnames(str(tmp_path / "names.txt")))


def test_a_missing_label_column_is_named(tmp_path):
    (tmp_path / "data.csv").write_text("filepath\tclass\na.png\tdog\n")
    with pytest.raises(DataError, match=r"line 2: missing key 'label'"):
        read_labeled(str(tmp_path / "data.csv"))


def test_k_shots_are_seeded_disjoint_and_cover_every_class(tmp_path):
    images, classes = read_labeled(write_folders(tmp_path / "data", {"a": 5, "b": 4}))
    train, rest = few_shot_split(images, classes, shots=3, seed=7, source="data")
    assert [i.label for i in train] == [0, 0, 0, 1, 1, 1]
    assert len(rest) == 3 and not {i.path for i in train} & {i.path for i in rest}
    assert few_shot_split(images, classes, 3, 7, "data") == (train, rest)
    others = [few_shot_split(images, classes, 3, seed, "data")[0] for seed in range(8)]
    assert len({tuple(i.path for i in t) for t in others}) > 1, "the seed draws the shots"


def test_a_class_with_fewer_than_k_images_is_named(tmp_path):
    images, classes = read_labeled(write_folders(tmp_path / "data", {"a": 5, "b": 2}))
    with pytest.raises(DataError, match=r"data: class 'b' has 2 images, fewer than --shots 3"):
        few_shot_split(images, classes, shots=3, seed=0, source="data")


def test_a_folder_without_class_folders_is_refused(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no class folders with images \(expected .*/<class>/\*\.png\)"):
        read_labeled(str(tmp_path / "empty"))


def test_templates_need_one_placeholder(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {}.\n\nitap of a {}\na photo\n")
    with pytest.raises(DataError, match=r"t\.txt, line 4: a template needs exactly one \{\}"):
        read_templates(str(tmp_path / "t.txt"))
    (tmp_path / "t.txt").write_text("a photo of a {}.\n\nitap of a {}\n")
    assert read_templates(str(tmp_path / "t.txt")) == ["a photo of a {}.", "itap of a {}"]


def test_repeated_class_names_are_refused(tmp_path):
    (tmp_path / "names.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(DataError, match=r"line 3: class name 'cat' repeats line 1"):
        read_classnames(str(tmp_path / "names.txt"))


# -- through the real server -------------------------------------------------------------------


def classify_args(digits, run_dir, *extra):
    return task_run_args("classify", digits["train_labels"], digits["val_labels"], run_dir, 20, "--shots", "8", *extra)


def test_dga_classification_beats_zero_shot_and_eval_reproduces_it(pretrained_server, digits, tmp_path):
    run_dir = tmp_path / "run"
    result = graytune(pretrained_server.endpoint, *classify_args(digits, run_dir, "--extra-tokens", "0"))
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout)
    logged = records(run_dir)
    run, zero_shot = logged[0], logged[1]
    assert (run["kind"], run["task"], run["method"], run["train_samples"]) == ("run", "classify", "graybox-dga", 80)
    assert zero_shot["kind"] == "zero_shot" and final["top1"] > zero_shot["top1"], (zero_shot, final)
    assert set(final["per_class_accuracy"]) == {
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    }
    assert logged[-1]["oracle/Forward_samples"] == 20 * (32 + 10), "32 images and 10 class prompts a step"

    evaluated = graytune(
        pretrained_server.endpoint, "eval", "--adapter", str(run_dir / "adapter"), "--val-data", digits["val_labels"]
    )
    assert evaluated.returncode == 0, evaluated.stderr
    # The same adapters on the same images; the server batches calls differently, and float
    # rounding may flip a near-tie: allow one image of the 359 either way.
    assert abs(json.loads(evaluated.stdout)["top1"] - final["top1"]) <= 1 / 359 + 1e-9


def test_a_class_with_too_few_images_is_refused_before_any_call(pretrained_server, digits, tmp_path):
    result = graytune(pretrained_server.endpoint, *classify_args(digits, tmp_path / "run", "--shots", "1000"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "train_labels.csv: class 'eight' has 139 images, fewer than --shots 1000" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_blackbox_key_trains_a_linear_probe_without_a_gradient_call(cache_dir, digits, tmp_path):
    key_file, log = tmp_path / "keys.json", tmp_path / "server.log"
    secret = create_key(key_file, "--tier", "blackbox", "--budget", "100000")
    with LocalServer(
        [*KEYED_ARGS, "--keys", str(key_file), "--pretrained", "mnist"],
        env={"GRAYTUNE_CACHE": str(cache_dir)},
        log_file=str(log),
    ) as server:
        run_dir = tmp_path / "run"
        result = graytune(
            server.endpoint, *classify_args(digits, run_dir, "--method", "linear-probe", "--lr", "0.01"), key=secret
        )
        assert result.returncode == 0, result.stderr
        with OracleClient(server.endpoint, api_key=secret) as oracle:
            charged = 100000 - oracle.describe().budget_remaining
        server.stop()
        wait_until(lambda: log.read_text().rstrip().endswith(" stopped"), 30, "the server's last log line")
    logged = records(run_dir)
    zero_shot, final = logged[1], logged[-1]
    assert final["kind"] == "eval" and final["top1"] > zero_shot["top1"], (zero_shot, final)
    val_images = len(open(digits["val_labels"]).read().splitlines()) - 1
    # Every image and class prompt embedded once for the whole run, charged once.
    assert final["oracle/Embed_samples"] == charged == 80 + val_images + 10
    report = audit(log, secret)
    assert set(report["calls_by_method"]) == {"Describe", "Embed"}, report
    assert report["gradient_samples"] == 0 and report["samples_embedded"] == charged


def test_output_adapters_train_with_a_blackbox_key_charged_each_input_once(cache_dir, digits, tmp_path):
    key_file = tmp_path / "keys.json"
    secret = create_key(key_file, "--tier", "blackbox", "--budget", "100000")
    with LocalServer(
        [*KEYED_ARGS, "--keys", str(key_file), "--pretrained", "mnist"], env={"GRAYTUNE_CACHE": str(cache_dir)}
    ) as server:
        result = graytune(server.endpoint, *classify_args(digits, tmp_path / "run", "--adapters", "output"), key=secret)
        assert result.returncode == 0, result.stderr
        with OracleClient(server.endpoint, api_key=secret) as oracle:
            charged = 100000 - oracle.describe().budget_remaining
    final = json.loads(result.stdout)
    val_images = len(open(digits["val_labels"]).read().splitlines()) - 1
    assert final["oracle/Embed_samples"] == charged == 80 + val_images + 10
    assert "oracle/Forward_calls" not in final
