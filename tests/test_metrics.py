"""Tests for graytune.client.tasks.retrieval.metrics."""

import numpy as np
import pytest
import torch

from graytune.client.tasks.retrieval.metrics import retrieval_metrics, unique_captions

DIRECTIONS = ("image_to_text", "text_to_image")
KEYS = ("mean_rank", "median_rank", "R@1", "R@5", "R@10")


def openclip_metrics(image_emb, text_emb):
    """OpenCLIP's get_clip_metrics (open_clip_train/train.py) for one-to-one pairs, on normalised embeddings."""
    image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
    text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
    logits_per_image = image_emb @ text_emb.t()
    ground_truth = torch.arange(len(text_emb)).view(-1, 1)
    metrics = {}
    for name, logit in {"image_to_text": logits_per_image, "text_to_image": logits_per_image.t()}.items():
        ranking = torch.argsort(logit, descending=True)
        preds = torch.where(ranking == ground_truth)[1].numpy()
        metrics[f"{name}_mean_rank"] = preds.mean() + 1
        metrics[f"{name}_median_rank"] = np.floor(np.median(preds)) + 1
        for k in [1, 5, 10]:
            metrics[f"{name}_R@{k}"] = np.mean(preds < k)
    return metrics


def test_unique_captions_keeps_first_seen_order():
    assert unique_captions(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_keys_match_openclip():
    emb = torch.eye(3)
    metrics = retrieval_metrics(emb, emb, ["a", "b", "c"], ["a", "b", "c"])
    assert set(metrics) == {f"{d}_{k}" for d in DIRECTIONS for k in KEYS}
    assert all(type(v) is float for v in metrics.values())


def test_hand_computed_many_images_per_caption():
    # Texts: cat along x, dog along y. Images are not normalised; the metric normalises them.
    text_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image_emb = torch.tensor([[2.0, 0.0], [0.0, 3.0], [3.0, 4.0]])  # cat (right), cat (looks like dog), dog (0.6, 0.8)
    metrics = retrieval_metrics(image_emb, text_emb, ["cat", "cat", "dog"], ["cat", "dog"])
    # image -> text ranks [0, 1, 0]; text -> image: cat's best positive is image 0 (rank 0),
    # dog's positive image 2 scores 0.8 but image 1 scores 1.0 (rank 1).
    assert metrics == pytest.approx(
        {
            "image_to_text_mean_rank": 4 / 3,
            "image_to_text_median_rank": 1.0,
            "image_to_text_R@1": 2 / 3,
            "image_to_text_R@5": 1.0,
            "image_to_text_R@10": 1.0,
            "text_to_image_mean_rank": 1.5,
            "text_to_image_median_rank": 1.0,  # floor(median([0, 1])) + 1
            "text_to_image_R@1": 0.5,
            "text_to_image_R@5": 1.0,
            "text_to_image_R@10": 1.0,
        }
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_to_one_equals_openclip(seed):
    generator = torch.Generator().manual_seed(seed)
    n, dim = 64, 8  # few dimensions, so ranks spread over R@1..R@10 and beyond
    image_emb = torch.randn(n, dim, generator=generator)
    text_emb = image_emb + 1.5 * torch.randn(n, dim, generator=generator)
    captions = [f"caption {i}" for i in range(n)]
    expected = openclip_metrics(image_emb, text_emb)
    assert 0 < expected["image_to_text_R@1"] < expected["image_to_text_R@10"] < 1

    # Ground truth comes from captions, not positions: shuffling the texts changes nothing.
    order = torch.randperm(n, generator=generator)
    metrics = retrieval_metrics(image_emb, text_emb[order], captions, [captions[i] for i in order])
    assert metrics == pytest.approx(expected)


def test_perfect_embeddings_rank_first():
    generator = torch.Generator().manual_seed(0)
    class_emb = torch.randn(10, 32, generator=generator)
    labels = torch.arange(50) % 10
    image_emb = class_emb[labels] * torch.rand(50, 1, generator=generator).add(0.5)  # scale must not matter
    names = [f"a photo of the digit {i}." for i in range(10)]
    metrics = retrieval_metrics(image_emb, class_emb, [names[i] for i in labels], names)
    for direction in DIRECTIONS:
        assert metrics[f"{direction}_R@1"] == 1.0
        assert metrics[f"{direction}_mean_rank"] == metrics[f"{direction}_median_rank"] == 1.0


def test_ties_do_not_count_against_the_positive():
    images, captions = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ["cat", "dog"]
    # Both texts score each image equally; the negative comes first for the cat image and still does not count.
    tied = retrieval_metrics(images, torch.tensor([[1.0, 1.0], [1.0, 1.0]]), captions, ["dog", "cat"])
    assert tied["image_to_text_R@1"] == 1.0 and tied["image_to_text_mean_rank"] == 1.0
    # A strictly better negative does count: each image prefers the other caption.
    beaten = retrieval_metrics(images, torch.tensor([[1.0, 0.1], [1.0, 1.0]]), captions, ["dog", "cat"])
    assert beaten["image_to_text_R@1"] == 0.0 and beaten["image_to_text_mean_rank"] == 2.0


def test_query_without_positive_raises():
    emb = torch.eye(3)
    with pytest.raises(ValueError, match=r"image_to_text: query 2 \(caption 'bird'\) has no match"):
        retrieval_metrics(emb, emb[:2], ["cat", "dog", "bird"], ["cat", "dog"])
    with pytest.raises(ValueError, match=r"text_to_image: query 2 \(caption 'bird'\) has no match"):
        retrieval_metrics(emb[:2], emb, ["cat", "dog"], ["cat", "dog", "bird"])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(N, E\) and \(M, E\), got \(2, 3\) and \(2, 4\)"):
        retrieval_metrics(torch.ones(2, 3), torch.ones(2, 4), ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="1 image captions for 2 images"):
        retrieval_metrics(torch.ones(2, 3), torch.ones(2, 3), ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one image"):
        retrieval_metrics(torch.ones(0, 3), torch.ones(2, 3), [], ["a", "b"])


def test_a_tie_with_a_wrong_caption_counts_for_the_positive():
    # Texts a and x are the same vector under two captions, b and c two others.
    text_emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    image_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.2], [1.0, 0.0]])
    metrics = retrieval_metrics(image_emb, text_emb, ["a", "b", "c", "b", "x"], ["a", "x", "b", "c"], visual="video")
    # Ranks: image 0 ties x (0), image 1 has c above b (1), image 2 has a, x, b above c (3),
    # image 3 has a and x above b (2), image 4 ties a (0): [0, 1, 3, 2, 0].
    assert metrics["video_to_text_R@1"] == pytest.approx(2 / 5)
    assert metrics["video_to_text_median_rank"] == 2.0
    assert metrics["video_to_text_mean_rank"] == pytest.approx(6 / 5 + 1)
    assert set(metrics) == {f"{d}_{k}" for d in ("video_to_text", "text_to_video") for k in KEYS}
