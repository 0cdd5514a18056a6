"""Playable result videos: a short H.264 MP4 clip per (aspect ratio, mode), rendered once and cached.

Each clip is a few seconds long, at a small size with the requested width-to-height ratio, and shows
what it is (the simulator, the size, the mode) with a ball whose motion follows the mode (steady for
normal, bouncing for fun, fast for spicy) and a progress bar, so a player visibly plays it. PyAV's
wheel brings its own FFmpeg (with libx264), Pillow draws the frames.

Rendering one takes about 0.2 s of CPU, so it happens once per (aspect ratio, mode), off the event loop,
the first time a file of that kind is served; every task of that kind then serves the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image, ImageDraw, ImageFont

#: Width and height per aspect ratio (even numbers: yuv420p halves both for the colour planes).
FRAME_SIZES: dict[str, tuple[int, int]] = {"2:3": (320, 480), "3:2": (480, 320), "1:1": (400, 400)}
SECONDS = 3
FPS = 24
_BACKGROUND = (24, 26, 40)
_BALL = (240, 160, 40)
_BAR = (90, 200, 120)


@dataclass(frozen=True)
class Clip:
    data: bytes
    sha256: str


def render(aspect_ratio: str, mode: str) -> bytes:
    """The MP4 bytes of one clip (``moov`` first, so a browser can start playing before the end)."""
    width, height = FRAME_SIZES[aspect_ratio]
    # Into a file: moving ``moov`` to the front rewrites the file, which FFmpeg does by reopening it.
    with tempfile.TemporaryDirectory(prefix="clip-") as folder:
        path = Path(folder) / "clip.mp4"
        _encode(path, aspect_ratio, mode, width, height)
        return path.read_bytes()


def _encode(path: Path, aspect_ratio: str, mode: str, width: int, height: int) -> None:
    title_size = max(14, width // 16)
    title = ImageFont.load_default(size=title_size)
    detail = ImageFont.load_default(size=max(10, width // 28))
    radius = max(12, min(width, height) // 14)
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "28", "tune": "animation"}
        frames = SECONDS * FPS
        for index in range(frames):
            image = Image.new("RGB", (width, height), _BACKGROUND)
            draw = ImageDraw.Draw(image)
            x, y = _ball(mode, index / FPS, width - 2 * radius, height // 3)
            draw.ellipse((x, height // 2 + y - radius, x + 2 * radius, height // 2 + y + radius), fill=_BALL)
            draw.text((width // 2, height // 5), "ImagineQ simulator", font=title, fill="white", anchor="mm")
            label = f"{aspect_ratio}  {width}x{height}  mode {mode}"
            draw.text((width // 2, height // 5 + title_size + 8), label, font=detail, fill=(180, 180, 200), anchor="mm")
            draw.rectangle((0, height - 8, width * (index + 1) // frames, height), fill=_BAR)
            frame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _ball(mode: str, t: float, span: int, amplitude: int) -> tuple[int, int]:
    """The ball's offset at ``t`` seconds: across the frame and back, plus a bounce for fun."""
    speed = {"normal": 0.5, "fun": 0.8, "spicy": 1.6}.get(mode, 0.5)
    x = int(span * abs((t * speed) % 2 - 1))
    y = -int(amplitude * abs(math.sin(t * 2 * math.pi))) if mode == "fun" else 0
    return x, y


class ClipCache:
    """Clips by (aspect ratio, mode), each rendered at most once, in a worker thread."""

    def __init__(self) -> None:
        self._clips: dict[tuple[str, str], asyncio.Future[Clip]] = {}

    async def get(self, aspect_ratio: str, mode: str) -> Clip:
        key = (aspect_ratio, mode)
        future = self._clips.get(key)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(None, _make, aspect_ratio, mode)
            self._clips[key] = future
        return await asyncio.shield(future)


def _make(aspect_ratio: str, mode: str) -> Clip:
    data = render(aspect_ratio, mode)
    return Clip(data=data, sha256=hashlib.sha256(data).hexdigest())
