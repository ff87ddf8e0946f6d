"""A small video-caption data set: scikit-learn's digits drifting across the frame, as MPEG-4 clips.

Layout under out_dir: videos/NNNN.mp4 (NNNN = index in load_digits; every `every`-th digit of the
digits data set's split), train_video.csv and val_video.csv (columns filepath, title), captions
those of the digits data set. Needs PyAV (`pip install 'graytune[video]'`) and scikit-learn.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from graytune.client.data.files import write_text_atomically
from graytune.client.demo.digits import write_digits
from graytune.client.tasks.retrieval.data import read_pairs
from graytune.client.tasks.video.frames import write_video

SIZE, SCALE, FRAMES = 32, 3, 10  # canvas, digit upscale (8 -> 24 pixels), frames per clip


def drifting(digit: np.ndarray, frames: int = FRAMES) -> list:
    """(8, 8) ink in 0..255 -> `frames` (SIZE, SIZE, 3) uint8 frames of it drifting left to right."""
    big = digit.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
    top, travel = (SIZE - big.shape[0]) // 2, SIZE - big.shape[1]
    clips = []
    for t in range(frames):
        canvas = np.zeros((SIZE, SIZE), np.uint8)
        left = round(t * travel / (frames - 1))
        canvas[top : top + big.shape[0], left : left + big.shape[1]] = big
        clips.append(np.repeat(canvas[:, :, None], 3, axis=2))
    return clips


def write_digit_videos(out_dir: str | os.PathLike, every: int = 4) -> dict:
    """Writes the clips (if not already there) -> {'train_video': csv, 'val_video': csv}."""
    out_dir = os.fspath(out_dir)
    paths = {split: os.path.join(out_dir, f"{split}.csv") for split in ("train_video", "val_video")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    digits = write_digits(out_dir)  # the split and captions of the image data set
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    for split, source in (("train_video", digits["train"]), ("val_video", digits["val"])):
        rows = []
        for image, caption in read_pairs(source)[::every]:
            with Image.open(image) as img:
                ink = np.asarray(img.convert("L"))
            video = f"videos/{os.path.basename(image)[:-4]}.mp4"
            write_video(os.path.join(out_dir, video), drifting(ink))
            rows.append(f"{video}\t{caption}")
        write_text_atomically(Path(paths[split]), "filepath\ttitle\n" + "".join(r + "\n" for r in rows))
    return paths
