"""Tests for graytune.client.data (preprocessing, data set files, the digits) and the retrieval data sets."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from graytune.client.data.batches import batch_indices, step_batches
from graytune.client.data.preprocess import Preprocess
from graytune.client.data.tables import DataError
from graytune.client.demo.digits import DIGIT_NAMES, TRAIN_TEMPLATES, VAL_TEMPLATE, write_digits
from graytune.client.tasks.retrieval.data import ImageCaptionDataset, collate, read_pairs

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalised(rgb):
    """Expected output (3,) for one RGB pixel with CLIP's mean and std."""
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)


def three_stripes(width=30, height=10):
    """Vertical thirds: red, green, blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    pixels[:, :third, 0] = pixels[:, third : 2 * third, 1] = pixels[:, 2 * third :, 2] = 255
    return Image.fromarray(pixels)


# --- Preprocess ---


def test_preprocess_normalises_known_pixels():
    pixels = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10  # (H=2, W=4, 3)
    preprocess = Preprocess(2, 4, CLIP_MEAN, CLIP_STD, interpolation="nearest", resize_mode="squash")
    out = preprocess(Image.fromarray(pixels))
    assert out.dtype == torch.float32 and out.shape == (3, 2, 4)
    torch.testing.assert_close(out[:, 1, 2], normalised(pixels[1, 2].tolist()))
    torch.testing.assert_close(out[:, 0, 0], normalised(pixels[0, 0].tolist()))


def test_preprocess_converts_grayscale_to_rgb():
    out = Preprocess(5, 5, CLIP_MEAN, CLIP_STD)(Image.new("L", (9, 7), 200))
    assert out.shape == (3, 5, 5)
    torch.testing.assert_close(out, normalised([200, 200, 200])[:, None, None].expand(3, 5, 5))


@pytest.mark.parametrize(
    "resize_mode, height, width",
    [("shortest", 10, 10), ("longest", 10, 10), ("squash", 7, 5), ("shortest", 6, 12), ("longest", 12, 6)],
)
def test_preprocess_output_size(resize_mode, height, width):
    for size in [(30, 10), (10, 30), (13, 13)]:
        out = Preprocess(height, width, CLIP_MEAN, CLIP_STD, resize_mode=resize_mode)(Image.new("RGB", size))
        assert out.shape == (3, height, width)


def test_shortest_crops_the_centre():
    out = Preprocess(10, 10, CLIP_MEAN, CLIP_STD, interpolation="nearest")(three_stripes())
    torch.testing.assert_close(out, normalised([0, 255, 0])[:, None, None].expand(3, 10, 10))


def test_longest_pads_with_black():
    # 30x10 fitted into 10x10 becomes 10x3 (width x height), padded 3 rows above and 4 below.
    out = Preprocess(10, 10, CLIP_MEAN, CLIP_STD, interpolation="nearest", resize_mode="longest")(three_stripes())
    black = normalised([0, 0, 0])[:, None, None]
    torch.testing.assert_close(out[:, :3], black.expand(3, 3, 10))
    torch.testing.assert_close(out[:, 6:], black.expand(3, 4, 10))
    torch.testing.assert_close(out[:, 3:6, 0], normalised([255, 0, 0])[:, None].expand(3, 3))
    torch.testing.assert_close(out[:, 3:6, 9], normalised([0, 0, 255])[:, None].expand(3, 3))


@pytest.mark.parametrize(
    "height, width, resize_mode, interpolation",
    [
        (16, 16, "shortest", "bicubic"),  # torchvision's Resize(int) path: long side truncated
        (16, 24, "shortest", "bicubic"),
        (16, 16, "longest", "bilinear"),
        (24, 16, "longest", "bicubic"),
        (16, 24, "squash", "bilinear"),
    ],
)
def test_preprocess_matches_openclip(height, width, resize_mode, interpolation):
    transform = pytest.importorskip("open_clip.transform")
    openclip = transform.image_transform(
        (height, width),
        is_train=False,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        resize_mode=resize_mode,
        interpolation=interpolation,
    )
    ours = Preprocess(height, width, CLIP_MEAN, CLIP_STD, interpolation=interpolation, resize_mode=resize_mode)
    rng = np.random.default_rng(0)
    for size in [(37, 23), (23, 37), (35, 16), (16, 35), (41, 41)]:
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        torch.testing.assert_close(ours(img), openclip(img), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=0), "height and width"),
        (dict(mean=(0.5, 0.5)), "mean and std"),
        (dict(std=(1.0, 0.0, 1.0)), "std must be positive"),
        (dict(interpolation="lanczos"), "interpolation"),
        (dict(resize_mode="crop"), "resize_mode"),
    ],
)
def test_preprocess_rejects_bad_settings(kwargs, message):
    settings = dict(height=8, width=8, mean=CLIP_MEAN, std=CLIP_STD) | kwargs
    with pytest.raises(ValueError, match=message):
        Preprocess(**settings)


# --- read_pairs, ImageCaptionDataset ---


def test_read_pairs_tsv_resolves_relative_paths(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("filepath\ttitle\nimages/a.png\ta cat.\n/abs/b.png\ta dog, sitting.\n")
    assert read_pairs(path) == [(str(tmp_path / "images" / "a.png"), "a cat."), ("/abs/b.png", "a dog, sitting.")]


def test_read_pairs_csv_with_other_separator_and_keys(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('id,image,text\n1,a.png,"a cat, sitting."\n')
    assert read_pairs(path, img_key="image", caption_key="text", separator=",") == [
        (str(tmp_path / "a.png"), "a cat, sitting.")
    ]


def test_read_pairs_jsonl(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"filepath": "a.png", "title": "a cat."})
        + "\n\n"
        + json.dumps({"filepath": "b.png", "title": "a dog."})
        + "\n"
    )
    assert read_pairs(path) == [(str(tmp_path / "a.png"), "a cat."), (str(tmp_path / "b.png"), "a dog.")]


def test_read_pairs_names_file_line_and_missing_key(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("filepath\tcaption\na.png\ta cat.\n")
    with pytest.raises(
        ValueError, match=r"pairs\.tsv, line 2: missing key 'title' \(found: \['filepath', 'caption'\]\)"
    ):
        read_pairs(tsv)

    comma = tmp_path / "pairs.csv"  # comma-separated, read with the default tab
    comma.write_text("filepath,title\na.png,a cat.\n")
    with pytest.raises(
        ValueError, match=r"\(found: \['filepath,title'\]\); the columns look separated by ',': add --csv-separator ','"
    ):
        read_pairs(comma)
    with pytest.raises(ValueError, match=rf"{tmp_path} is a folder, not a data set file \(\.csv, \.tsv or \.jsonl\)"):
        read_pairs(tmp_path)

    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"filepath": "a.png", "title": "a cat."}\n{"filepath": "b.png"}\n')
    with pytest.raises(ValueError, match=r"pairs\.jsonl, line 2: missing key 'title'"):
        read_pairs(jsonl)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("pairs.jsonl", '{"filepath": "a.png", "title": 3}\n', r"line 1: 'title' must be a non-empty string"),
        ("pairs.jsonl", "not json\n", r"line 1: invalid JSON"),
        ("pairs.jsonl", "[1, 2]\n", r"line 1: expected a JSON object"),
        ("pairs.csv", "filepath\ttitle\n", r"pairs\.csv: no image-caption pairs"),
        ("pairs.parquet", "", r"unsupported data set format '\.parquet'"),
    ],
)
def test_read_pairs_rejects_bad_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_pairs(path)


def test_dataset_and_collate(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (12, 8), (255, 0, 0)).save(tmp_path / "images" / "red.png")
    Image.new("L", (8, 12), 0).save(tmp_path / "images" / "black.png")
    (tmp_path / "pairs.csv").write_text("filepath\ttitle\nimages/red.png\tred.\nimages/black.png\tblack.\n")

    dataset = ImageCaptionDataset(tmp_path / "pairs.csv", Preprocess(6, 6, CLIP_MEAN, CLIP_STD))
    assert len(dataset) == 2 and dataset.captions == ["red.", "black."]
    pixels, caption = dataset[0]
    assert pixels.shape == (3, 6, 6) and caption == "red."

    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate)
    pixels, captions = next(iter(loader))
    assert pixels.shape == (2, 3, 6, 6) and pixels.dtype == torch.float32 and captions == ["red.", "black."]
    torch.testing.assert_close(pixels[1, :, 0, 0], normalised([0, 0, 0]))


def small_set(tmp_path, rows: int = 5):
    """pairs.csv with `rows` red images (line 2 names the first)."""
    for i in range(rows):
        Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / f"{i}.png")
    lines = ["filepath\ttitle"] + [f"{i}.png\tred {i}." for i in range(rows)]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "pairs.csv"


def test_check_summarises_a_good_set(tmp_path):
    dataset = ImageCaptionDataset(small_set(tmp_path), Preprocess(6, 6, CLIP_MEAN, CLIP_STD))
    assert dataset.check(decode=3).endswith(
        "pairs.csv: 5 pairs, 5 distinct captions, every image file found, 3 decoded"
    )


def test_check_names_the_line_of_a_missing_image(tmp_path):
    path = small_set(tmp_path)
    (tmp_path / "3.png").unlink()
    (tmp_path / "4.png").unlink()
    dataset = ImageCaptionDataset(path, Preprocess(6, 6, CLIP_MEAN, CLIP_STD))
    with pytest.raises(DataError, match=r"pairs\.csv, line 5: no such image file .*3\.png \(and 1 more\)"):
        dataset.check()


def test_check_names_the_line_of_a_file_that_is_not_an_image(tmp_path):
    path = small_set(tmp_path)
    (tmp_path / "0.png").write_text("not an image")
    with pytest.raises(DataError, match=r"pairs\.csv, line 2: cannot read image .*0\.png: cannot identify image file"):
        ImageCaptionDataset(path, Preprocess(6, 6, CLIP_MEAN, CLIP_STD)).check(decode=1)


def test_check_counts_what_a_run_that_skips_unreadable_files_leaves_out(tmp_path):
    path = small_set(tmp_path)
    (tmp_path / "0.png").write_text("not an image")
    (tmp_path / "3.png").unlink()
    dataset = ImageCaptionDataset(path, Preprocess(6, 6, CLIP_MEAN, CLIP_STD))
    summary = dataset.check(decode=5, skip_unreadable=True)
    assert summary.endswith("5 pairs, 5 distinct captions, 1 of 5 missing (skipped), 3 of 5 decoded"), summary


def test_step_batches_leave_out_unreadable_samples_and_say_why_before_their_batch(tmp_path):
    path = small_set(tmp_path, rows=8)
    (tmp_path / "5.png").write_text("not an image")
    dataset = ImageCaptionDataset(path, Preprocess(6, 6, CLIP_MEAN, CLIP_STD))
    events: list = []  # in the order they happen
    for _, captions in step_batches(dataset, 4, 0, 0, 4, workers=0, skipped=lambda why: events.append(why)):
        assert "red 5." not in captions
        events.append(len(captions))
    why = f"{path}, line 7: cannot read image {tmp_path / '5.png'}: cannot identify image file '{tmp_path / '5.png'}'"
    expected = []
    for step in range(4):  # two epochs of two batches: image 5 is in one batch of each
        expected += [(why,), 3] if 5 in batch_indices(8, 4, 0, step) else [4]
    assert events == expected
    with pytest.raises(DataError, match=r"line 7: cannot read image"):
        list(step_batches(dataset, 4, 0, 0, 4, workers=0))  # without `skipped`: the run stops


def test_a_batch_with_nothing_readable_stops_the_run(tmp_path):
    path = small_set(tmp_path, rows=2)
    for i in range(2):
        (tmp_path / f"{i}.png").unlink()
    dataset = ImageCaptionDataset(path, Preprocess(6, 6, CLIP_MEAN, CLIP_STD))
    with pytest.raises(DataError, match=r"step 1: none of its 2 samples can be read \(.*line 2: cannot read image"):
        list(step_batches(dataset, 2, 0, 0, 1, workers=0, skipped=lambda why: None))


def test_an_image_that_fails_later_names_its_file_and_line(tmp_path):
    path = small_set(tmp_path)
    dataset = ImageCaptionDataset(path, Preprocess(6, 6, CLIP_MEAN, CLIP_STD))
    dataset.check(decode=1)  # decodes row 0 only
    (tmp_path / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "4.png").unlink()
    with pytest.raises(DataError, match=r"pairs\.csv, line 4: cannot read image .*2\.png"):
        dataset[2]
    with pytest.raises(DataError, match=r"pairs\.csv, line 6: cannot read image .*4\.png: No such file or directory$"):
        dataset[4]


def test_a_file_that_is_not_text_is_refused_with_its_name(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"filepath\ttitle\n\xff\xfe.png\tx\n")
    with pytest.raises(DataError, match=r"pairs\.csv: not UTF-8 text"):
        read_pairs(path)
    with pytest.raises(DataError, match=r"nothing\.csv: no such data set file"):
        read_pairs(tmp_path / "nothing.csv")


# --- digits ---


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    datasets = pytest.importorskip("sklearn.datasets")
    out_dir = tmp_path_factory.mktemp("digits")
    return out_dir, write_digits(out_dir, seed=0, upscale=4), datasets.load_digits()


def test_digits_split_and_captions(digits):
    out_dir, paths, source = digits
    assert paths == {
        split: str(out_dir / f"{split}.csv")
        for split in ("train", "val", "train_labels", "val_labels", "train_sketch", "val_sketch")
    }
    assert (out_dir / "val.csv").read_text().startswith("filepath\ttitle\nimages/")
    assert (out_dir / "val_labels.csv").read_text().startswith("filepath\tlabel\nimages/")
    train, val = read_pairs(paths["train"]), read_pairs(paths["val"])
    assert len(train) + len(val) == 1797 and 0.18 < len(val) / 1797 < 0.22
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert len(os.listdir(out_dir / "images")) == 1797

    def label(image_path):
        return DIGIT_NAMES[source.target[int(os.path.basename(image_path)[:4])]]

    assert all(caption == VAL_TEMPLATE.format(name=label(p)) for p, caption in val)
    labelled = {split: read_pairs(paths[f"{split}_labels"], caption_key="label") for split in ("train", "val")}
    assert labelled == {"train": [(p, label(p)) for p, _ in train], "val": [(p, label(p)) for p, _ in val]}
    assert len({caption for _, caption in val}) == 10
    assert all(caption in {t.format(name=label(p)) for t in TRAIN_TEMPLATES} for p, caption in train)
    assert len({caption for _, caption in train}) == 10 * len(TRAIN_TEMPLATES)


def test_digits_images_are_upscaled_digits(digits):
    out_dir, _, source = digits
    with Image.open(out_dir / "images" / "0005.png") as img:
        assert img.mode == "L" and img.size == (32, 32)
        pixels = np.asarray(img)
    ink = np.round(source.images[5] * 255 / 16)  # ink density as brightness
    np.testing.assert_array_equal(pixels[::4, ::4], ink)
    np.testing.assert_array_equal(pixels[3::4, 3::4], ink)


def test_digits_existing_data_set_is_reused(digits):
    out_dir, paths, _ = digits
    before = os.stat(paths["train"]).st_mtime_ns
    assert write_digits(out_dir) == paths
    assert os.stat(paths["train"]).st_mtime_ns == before
