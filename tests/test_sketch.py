"""Sketch-image retrieval: mAP@all and P@K against hand-computed cases and against the average
over every order of tied items, data errors naming file and line, the category loss, and
training through the real server."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from graytune.client.data.preprocess import Preprocess
from graytune.client.data.tables import DataError
from graytune.client.modules.losses import category_contrastive_loss
from graytune.client.tasks.retrieval.loss import contrastive_loss
from graytune.client.tasks.sketch.data import SketchPhotoDataset
from graytune.client.tasks.sketch.metrics import average_precision, precision_at, sketch_metrics

from helpers import graytune, records, task_run_args

# -- metrics ---------------------------------------------------------------------------------


def test_average_precision_by_hand():
    # Relevant at positions 1 and 3: (1/1 + 2/3) / 2.
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([True, False, True])) == pytest.approx(5 / 6)
    # One relevant tied with one irrelevant, first or second with equal odds: (1/1 + 1/2) / 2.
    assert average_precision(np.array([1.0, 1.0]), np.array([True, False])) == pytest.approx(0.75)


def test_precision_at_k_by_hand():
    scores, relevant = np.array([3.0, 2.0, 2.0, 1.0]), np.array([True, True, False, True])
    assert precision_at(scores, relevant, 1) == 1.0
    assert precision_at(scores, relevant, 2) == pytest.approx((1 + 0.5) / 2)  # half of a 1-of-2 tie
    assert precision_at(scores, relevant, 4) == pytest.approx(3 / 4)


def expected_over_tie_orders(scores, relevant, k):
    """AP and P@k averaged over every order of the tied items, by enumeration."""
    aps, precisions = [], []
    for tie_break in itertools.permutations(range(len(scores))):
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], tie_break[i]))
        hits = relevant[order]
        positions = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(positions) + 1) / positions))
        precisions.append(hits[:k].sum() / k)
    return np.mean(aps), np.mean(precisions)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=6), st.data())
def test_ties_score_as_the_average_over_their_orders(items, data):
    scores = np.array([float(s) for s, _ in items])
    relevant = np.array([r for _, r in items])
    if not relevant.any():
        relevant[0] = True
    k = data.draw(st.integers(1, len(items)))
    ap, precision = expected_over_tie_orders(scores, relevant, k)
    assert average_precision(scores, relevant) == pytest.approx(ap, abs=1e-12)
    assert precision_at(scores, relevant, k) == pytest.approx(precision, abs=1e-12)


def test_p_at_k_is_clamped_to_the_gallery_and_named_by_the_k_used():
    sketches, photos = torch.eye(2), torch.eye(2)
    metrics = sketch_metrics(sketches, photos, torch.tensor([0, 1]), torch.tensor([0, 1]), k=100)
    assert metrics == {"sketch_to_photo_mAP@all": 1.0, "sketch_to_photo_P@2": 0.5}


def test_a_query_without_a_relevant_photo_is_refused():
    with pytest.raises(ValueError, match="without a relevant gallery item"):
        average_precision(np.array([1.0]), np.array([False]))


# -- loss --------------------------------------------------------------------------------------


def test_one_item_per_category_is_clips_loss():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    labels, scale = torch.tensor([3, 1, 4, 0, 2]), torch.tensor(10.0)
    expected = contrastive_loss(a, b, torch.arange(5), scale)
    torch.testing.assert_close(category_contrastive_loss(a, b, labels, labels, scale), expected)


def test_a_shared_category_spreads_the_target():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = category_contrastive_loss(a, b, torch.tensor([0, 1]), torch.tensor([0, 0, 1]), torch.tensor(1.0))
    # a[0] -> b: targets (1/2, 1/2, 0) over logits (1, 1, 0); a[1]: target b[2] over (0, 0, 1).
    a_to_b = (-math.log(math.e / (2 * math.e + 1)) - math.log(math.e / (math.e + 2))) / 2
    b_to_a = -math.log(math.e / (math.e + 1))  # each b: its one a at logit 1 against 0
    assert loss.item() == pytest.approx((a_to_b + b_to_a) / 2, rel=1e-6)


# -- data --------------------------------------------------------------------------------------

PREPROCESS = Preprocess(16, 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def write_tree(root, layout):
    for domain, categories in layout.items():
        for category, count in categories.items():
            (root / domain / category).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), i * 30).save(root / domain / category / f"{i}.png")
    return str(root)


def test_folders_give_sketch_queries_and_a_photo_gallery(tmp_path):
    root = write_tree(tmp_path / "d", {"sketch": {"cat": 2, "dog": 1}, "photo": {"cat": 1, "dog": 2, "owl": 1}})
    data = SketchPhotoDataset(root, PREPROCESS)
    assert data.categories == ["cat", "dog", "owl"] and len(data) == 3
    assert data.sketch_labels().tolist() == [0, 0, 1] and data.photo_labels().tolist() == [0, 1, 1, 2]
    assert [data.photos[i][2] for i in data.paired_photos([0, 1, 2])] == [0, 0, 1]
    again = SketchPhotoDataset(root, PREPROCESS)
    assert all(data.paired_photos([i, 2]) == again.paired_photos([i, 2]) for i in range(3)), "seeded"
    sketches, labels, photos, photo_labels = data.batch([2, 0])
    assert sketches.shape == photos.shape == (2, 3, 16, 16) and labels.tolist() == photo_labels.tolist() == [1, 0]
    assert "3 sketches and 4 photos of 3 categories" in data.check()


def test_a_category_without_photos_is_named(tmp_path):
    root = write_tree(tmp_path / "d", {"sketch": {"cat": 1, "yak": 1}, "photo": {"cat": 1}})
    with pytest.raises(DataError, match=r"sketch/yak: category 'yak' has sketches but no photos"):
        SketchPhotoDataset(root, PREPROCESS)


def test_a_folder_without_photos_is_refused(tmp_path):
    root = write_tree(tmp_path / "d", {"sketch": {"cat": 1}})
    with pytest.raises(DataError, match=r"no photo images \(expected .*/photo/<category>/\*\.png\)"):
        SketchPhotoDataset(root, PREPROCESS)


def test_an_unknown_domain_names_its_line(tmp_path):
    (tmp_path / "d.csv").write_text("filepath\tdomain\tcategory\na.png\tphoto\tcat\nb.png\tdrawing\tcat\n")
    with pytest.raises(DataError, match=r"d\.csv, line 3: domain must be sketch or photo, got 'drawing'"):
        SketchPhotoDataset(str(tmp_path / "d.csv"), PREPROCESS)


# -- through the real server -------------------------------------------------------------------


def test_sketch_retrieval_beats_zero_shot(pretrained_server, digits, tmp_path):
    run_dir = tmp_path / "run"
    args = task_run_args("sketch", digits["train_sketch"], digits["val_sketch"], run_dir, 30)
    result = graytune(pretrained_server.endpoint, *args)
    assert result.returncode == 0, result.stderr
    final, logged = json.loads(result.stdout), records(run_dir)
    zero_shot = logged[1]
    assert zero_shot["kind"] == "zero_shot"
    assert final["sketch_to_photo_mAP@all"] > zero_shot["sketch_to_photo_mAP@all"], (zero_shot, final)
    assert {k for k in final if not k.startswith("oracle/")} == {"sketch_to_photo_mAP@all", "sketch_to_photo_P@100"}
    # A step's Forward calls carry the batch's 32 sketches and their 32 photos: in frugal image
    # calls (the default wire) one per domain, each with its own pixel adapter.
    assert (logged[-1]["oracle/Forward_calls"], logged[-1]["oracle/Forward_samples"]) == (2 * 30, 30 * 64)
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["domains"] == ["sketch", "photo"] and adapter["task"] == {"name": "sketch"}
