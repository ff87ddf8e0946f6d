"""Using trained adapters: `graytune embed` equals encode_* of the same inputs with ids in order,
`graytune predict` equals classify(), and a failure mid-way leaves no output file."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from graytune.client.data.files import umask
from graytune.client.data.preprocess import load_image, preprocess_for
from graytune.client.inference.model import Classifier, load_model
from graytune.client.methods.graybox.options import DGAOptions
from graytune.client.tasks.retrieval.data import read_pairs
from graytune.client.training.loop import TrainConfig, train
from graytune.client.transport.oracle_client import OracleClient

from helpers import graytune

# Unit vectors from the same server and inputs, sent in batches of other sizes: float32 sums
# in another order differ by a few ulp per element, far below this.
ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(server, digits, tmp_path_factory):
    """Two runs of two steps against the default server: retrieval and classification adapters."""
    root = tmp_path_factory.mktemp("runs")
    common = dict(batch_size=8, eval_every=2, save_every=2, options=DGAOptions(steps=2))
    with OracleClient(server.endpoint) as oracle:
        train(
            oracle,
            TrainConfig(train_data=digits["train"], output_dir=str(root / "retrieval"), **common),
            progress=False,
        )
        train(
            oracle,
            TrainConfig(
                train_data=digits["train_labels"],
                output_dir=str(root / "classify"),
                task="classify",
                task_options={"shots": 2},
                **common,
            ),
            progress=False,
        )
    return {name: str(root / name / "adapter") for name in ("retrieval", "classify")}


def first_images(digits, count, path):
    """A CSV of the first `count` images of the digits training set; -> their absolute paths."""
    pairs = read_pairs(digits["train"])[:count]
    path.write_text("filepath\n" + "".join(os.path.relpath(p, path.parent) + "\n" for p, _ in pairs))
    return [p for p, _ in pairs]


def on_images(server, command, adapter, folder, out, *args):
    """`graytune COMMAND --adapter ADAPTER --images FOLDER/images.csv --out FOLDER/OUT ARGS`."""
    images, output = str(folder / "images.csv"), str(folder / out)
    return graytune(server.endpoint, command, "--adapter", adapter, "--images", images, "--out", output, *args)


def test_embedded_images_equal_encode_image_with_ids_in_order(server, runs, digits, tmp_path):
    images = first_images(digits, 70, tmp_path / "images.csv")  # two batches: 64 + 6
    result = on_images(server, "embed", runs["retrieval"], tmp_path, "emb.npy", "--no-progress")
    assert result.returncode == 0, result.stderr
    table = np.load(tmp_path / "emb.npy")
    assert [os.path.normpath(tmp_path / i) for i in table["id"]] == [os.path.normpath(p) for p in images]
    with OracleClient(server.endpoint) as oracle:
        model = load_model(runs["retrieval"], oracle)
        pixels = torch.stack([load_image(p, preprocess_for(oracle), "test") for p in images])
        expected = torch.cat([model.encode_image(pixels[:35]), model.encode_image(pixels[35:])])
    torch.testing.assert_close(torch.from_numpy(table["embedding"]), expected, atol=ATOL, rtol=0)


def test_embedded_texts_in_safetensors_carry_their_ids(server, runs, tmp_path):
    texts = ["a photo of the digit one.", "a handwritten seven.", "the number zero."]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    result = graytune(
        server.endpoint,
        "embed",
        "--adapter",
        runs["retrieval"],
        "--texts",
        str(tmp_path / "texts.txt"),
        "--out",
        str(tmp_path / "emb.safetensors"),
        "--batch-size",
        "2",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    usual = 0o666 & ~umask()  # as the .npy, and any new file (safetensors writes 0600 of its own)
    assert stat.S_IMODE((tmp_path / "emb.safetensors").stat().st_mode) == usual
    assert {stat.S_IMODE(f.stat().st_mode) for f in Path(runs["retrieval"]).iterdir()} == {usual}
    with safe_open(str(tmp_path / "emb.safetensors"), "pt") as f:
        ids, embeddings = json.loads(f.metadata()["ids"]), f.get_tensor("embeddings")
    assert ids == ["1", "2", "3"]
    with OracleClient(server.endpoint) as oracle:
        expected = load_model(runs["retrieval"], oracle).encode_text(texts)
    torch.testing.assert_close(embeddings, expected, atol=ATOL, rtol=0)


def test_a_failure_mid_way_leaves_no_output_file(server, runs, digits, tmp_path):
    first_images(digits, 70, tmp_path / "images.csv")
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    lines = (tmp_path / "images.csv").read_text().splitlines()
    lines[67] = "broken.png"  # in the second batch, after the first was embedded
    (tmp_path / "images.csv").write_text("\n".join(lines) + "\n")
    result = on_images(server, "embed", runs["retrieval"], tmp_path, "emb.npy", "--no-progress")
    assert result.returncode == 1 and "images.csv, line 68: cannot read image" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["broken.png", "images.csv"], "no output, no temporary file"


def test_predict_writes_the_classifiers_prediction_per_image(server, runs, digits, tmp_path):
    images = first_images(digits, 12, tmp_path / "images.csv")
    result = on_images(server, "predict", runs["classify"], tmp_path, "pred.csv", "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(tmp_path / "pred.csv")))
    with OracleClient(server.endpoint) as oracle:
        classifier = load_model(runs["classify"], oracle)
        assert isinstance(classifier, Classifier)
        probabilities = classifier.classify(torch.stack([load_image(p, preprocess_for(oracle), "t") for p in images]))
    assert len(rows) == 12 and list(rows[0])[3:] == classifier.classnames
    assert [r["prediction"] for r in rows] == [classifier.classnames[i] for i in probabilities.argmax(dim=1)]
    written = torch.tensor([[float(r[c]) for c in classifier.classnames] for r in rows])
    torch.testing.assert_close(written, probabilities, atol=1e-5, rtol=0)  # 6 decimals in the file
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(12))


def test_predict_refuses_retrieval_adapters_and_a_bad_output_name(server, runs, digits, tmp_path):
    first_images(digits, 2, tmp_path / "images.csv")
    result = on_images(server, "predict", runs["retrieval"], tmp_path, "pred.csv")
    assert result.returncode == 1 and "predict needs classification adapters" in result.stderr
    result = graytune(
        server.endpoint, "embed", "--images", str(tmp_path / "images.csv"), "--out", str(tmp_path / "emb.txt")
    )
    assert result.returncode == 1 and "--out" in result.stderr and ".npy or .safetensors" in result.stderr
