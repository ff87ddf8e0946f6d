"""A clip's N frames, sampled uniformly from a video file (PyAV) or from a folder of frames.

PyAV decodes with the FFmpeg libraries its wheel bundles, so no system FFmpeg is needed, and it
reads every container and codec FFmpeg does; `pip install 'graytune[video]'`.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from graytune.client.data.image_files import images_in
from graytune.client.data.tables import DataError


def uniform_indices(available: int, frames: int) -> list[int]:
    """`frames` indices spread evenly over `available` frames: the centre of each of N equal spans."""
    return [int((i + 0.5) * available / frames) for i in range(frames)]


def read_clip(path: str, frames: int, where: str) -> list[Image.Image]:
    """N RGB frames of the video file or frame folder at `path`; DataError naming `where` if the
    clip cannot be read or has fewer than N frames."""
    if os.path.isdir(path):
        files = images_in(path)
        if not files:
            raise DataError(f"{where}: the frame folder {path} holds no images")
        chosen = _enough(files, frames, where, path)
        try:
            return [Image.open(f).convert("RGB") for f in chosen]
        except OSError as e:
            raise DataError(f"{where}: cannot read a frame of {path}: {e}") from None
    if not os.path.isfile(path):
        raise DataError(f"{where}: no such video file or frame folder {path}")
    decoded = _decode(path, where)
    if len(decoded) == 1:
        raise DataError(
            f"{where}: {path} is a single frame (a still image?), not a clip: give a video or a folder of frames"
        )
    return _enough(decoded, frames, where, path)


def _enough(available: list, frames: int, where: str, path: str) -> list:
    if len(available) < frames:
        raise DataError(f"{where}: {path} has {len(available)} frames, fewer than --frames {frames}")
    return [available[i] for i in uniform_indices(len(available), frames)]


def _decode(path: str, where: str) -> list[Image.Image]:
    try:
        import av
    except ImportError:
        raise ModuleNotFoundError("video files need PyAV: pip install 'graytune[video]'") from None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"{where}: {path} has no video stream")
            # One swscale thread: its default starts a thread pool for every frame, which cost
            # 4 ms a 48x48 frame on a loaded 2-core machine against 0.2 ms; clips decode in
            # parallel across DataLoader workers instead.
            return [frame.reformat(format="rgb24", threads=1).to_image() for frame in container.decode(video=0)]
    except av.FFmpegError as e:
        raise DataError(f"{where}: cannot read video {path}: {e}") from None


def write_video(path: str, frames: list[np.ndarray], fps: int = 8) -> None:
    """Writes (H, W, 3) uint8 frames as an MPEG-4 file (for demo and test clips)."""
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
