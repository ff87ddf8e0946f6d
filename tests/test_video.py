"""Text-video retrieval: uniform frame sampling, precise errors for clips that cannot serve,
temporal pooling, and training through the real server on MPEG-4 clips PyAV wrote."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from graytune.client.data.tables import DataError
from graytune.client.demo.digit_videos import drifting, write_digit_videos
from graytune.client.modules.layers import AttentionPooling
from graytune.client.tasks.video.frames import read_clip, uniform_indices, write_video

from helpers import graytune, records, task_run_args, train_args


@pytest.fixture(scope="module")
def videos(digits):
    return write_digit_videos(os.path.dirname(digits["train"]))


def test_uniform_indices_take_the_centre_of_equal_spans():
    assert uniform_indices(8, 8) == list(range(8))
    assert uniform_indices(10, 4) == [1, 3, 6, 8]
    assert uniform_indices(3, 1) == [1]


def test_a_video_file_gives_its_frames_in_order(tmp_path):
    frames = [np.full((16, 16, 3), 25 * i, np.uint8) for i in range(10)]
    write_video(str(tmp_path / "clip.mp4"), frames)
    clip = read_clip(str(tmp_path / "clip.mp4"), 4, "here")
    brightness = [np.asarray(f).mean() for f in clip]
    # Frames 1, 3, 6, 8 (brightness 25, 75, 150, 200); MPEG-4 is lossy: a few levels either way.
    np.testing.assert_allclose(brightness, [25, 75, 150, 200], atol=6)


def test_a_frame_folder_is_a_clip(tmp_path):
    for i in range(5):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i:02d}.png")
    assert [f.getpixel((0, 0))[0] for f in read_clip(str(tmp_path), 2, "here")] == [40, 120]


def test_a_short_clip_names_its_row_and_the_frames_asked_for(tmp_path):
    write_video(str(tmp_path / "short.mp4"), drifting(np.full((8, 8), 255, np.uint8), frames=3))
    with pytest.raises(DataError, match=r"v\.csv, line 2: .*short\.mp4 has 3 frames, fewer than --frames 8"):
        read_clip(str(tmp_path / "short.mp4"), 8, "v.csv, line 2")


def test_a_still_image_given_as_a_clip_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "still.png")
    with pytest.raises(
        DataError, match=r"v\.csv, line 3: .*still\.png is a single frame \(a still image\?\), not a clip"
    ):
        read_clip(str(tmp_path / "still.png"), 8, "v.csv, line 3")


def test_an_unreadable_video_is_named(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 100)
    with pytest.raises(DataError, match=r"v\.csv, line 5: cannot read video .*bad\.mp4"):
        read_clip(str(tmp_path / "bad.mp4"), 8, "v.csv, line 5")


def test_an_empty_frame_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=r"v\.csv, line 3: the frame folder .* holds no images"):
        read_clip(str(tmp_path), 8, "v.csv, line 3")


def test_attention_pooling_starts_as_the_mean_and_learns_weights():
    frames = torch.randn(2, 5, 6)
    frames[0] = torch.eye(6)[:5]  # clip 0's frames orthonormal: a query along one scores only it
    pool = AttentionPooling(6)
    torch.testing.assert_close(pool(frames), frames.mean(dim=1))
    with torch.no_grad():
        pool.query.copy_(frames[0, 3] * 50)  # scores 50 for frame 3, 0 for the others (weight e^-50 each)
    assert torch.allclose(pool(frames)[0], frames[0, 3], atol=1e-3)


def test_video_retrieval_beats_zero_shot_and_eval_reproduces_it(pretrained_server, videos, tmp_path):
    run_dir = tmp_path / "run"
    clips = ("--batch-size", "16", "--frames", "4", "--pooling", "attention")
    args = task_run_args("video", videos["train_video"], videos["val_video"], run_dir, 20, *clips)
    result = graytune(pretrained_server.endpoint, *args)
    assert result.returncode == 0, result.stderr
    final, logged = json.loads(result.stdout), records(run_dir)
    zero_shot = logged[1]
    assert final["video_to_text_R@1"] > zero_shot["video_to_text_R@1"], (zero_shot, final)
    assert {"video_to_text_median_rank", "text_to_video_mean_rank", "text_to_video_R@10"} <= set(final)
    # Two Forward calls a step: the 16 clips' 64 frames in one, the captions in the other.
    assert logged[-1]["oracle/Forward_calls"] == 40
    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["temporal_pooling"], config["task"]) == ("attention", {"name": "video", "frames": 4})

    evaluated = graytune(
        pretrained_server.endpoint, "eval", "--adapter", str(adapter), "--val-data", videos["val_video"]
    )
    assert evaluated.returncode == 0, evaluated.stderr
    # 90 clips: float rounding in another batching may move a near-tie by one place.
    assert abs(json.loads(evaluated.stdout)["video_to_text_R@1"] - final["video_to_text_R@1"]) <= 1 / 90 + 1e-9


def test_a_short_clip_in_the_data_is_refused_before_any_call(pretrained_server, videos, tmp_path):
    args = train_args(videos["train_video"], tmp_path / "run", "--task", "video", "--frames", "11")
    result = graytune(pretrained_server.endpoint, *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "train_video.csv, line 2: " in result.stderr and "has 10 frames, fewer than --frames 11" in result.stderr
    assert not (tmp_path / "run").exists()


def test_clips_with_more_frames_than_the_servers_batch_limit_are_evaluated_in_several_calls(videos):
    """`graytune eval --task video` with its defaults (64 clips of 8 frames) against a server
    whose --max-batch is 256 once failed with INVALID_ARGUMENT: evaluation takes fewer clips per call."""
    from graytune.client.modules.backbone import ZeroShotCLIP
    from graytune.client.tasks.video.task import VideoOptions, VideoTask
    from graytune.client.transport.local_server import LocalServer
    from graytune.client.transport.oracle_client import OracleClient

    with (
        LocalServer(["--dev", "--plaintext", "--threads", "1", "--max-batch", "8"]) as server,
        OracleClient(server.endpoint) as oracle,
    ):
        task = VideoTask(oracle, options=VideoOptions(frames=3))
        _, clips = task.load(None, videos["val_video"], seed=0)
        image_calls = oracle.usage().get("Embed_calls", 0)
        metrics = task.evaluate(ZeroShotCLIP(oracle), clips, batch_size=64)
        captions = len(set(clips.captions))
        calls = oracle.usage()["Embed_calls"] - image_calls
    # 2 clips of 3 frames fit in 8; the caption gallery goes in calls of the same size.
    assert calls == -(-len(clips) // 2) + -(-captions // 2)
    assert 0 <= metrics["video_to_text_R@1"] <= 1
