"""Playable result videos and images: an H.264 MP4 clip per (aspect ratio, mode, resolution, duration)
and a PNG or JPEG image per (aspect ratio, resolution, format, index), rendered once and cached.

A clip has the requested width-to-height ratio, resolution (its shorter side: 480 or 720 pixels) and
duration, and shows what it is (the simulator, the size, the mode) with a ball whose motion follows the
mode (steady for normal, bouncing for fun, fast for spicy) and a progress bar, so a player visibly plays
it, and the prompt's first words and the task id, so two stored videos can be told apart by looking. An
image shows its index among its task's images. The ball's colour is the task's lineage: a derived
task (a video of an image, an upscale, an extension) has its parent's. PyAV's wheel brings its own FFmpeg
(with libx264), Pillow draws the frames.

Rendering happens once per kind of file, off the event loop, the first time a file of that kind is
served; every task of that kind then serves the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image, ImageDraw, ImageFont

#: Width to height per aspect ratio.
RATIOS: dict[str, tuple[int, int]] = {"2:3": (2, 3), "3:2": (3, 2), "1:1": (1, 1), "16:9": (16, 9), "9:16": (9, 16)}
#: The shorter side per resolution.
SHORT_SIDES: dict[str, int] = {"480p": 480, "720p": 720}
FPS = 12


def frame_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """Width and height (even numbers: yuv420p halves both for the colour planes)."""
    w, h = RATIOS[aspect_ratio]
    short = SHORT_SIDES[resolution]
    if w >= h:
        return _even(short * w / h), short
    return short, _even(short * h / w)


def _even(value: float) -> int:
    return int(value) // 2 * 2


_BACKGROUND = (24, 26, 40)
_BAR = (90, 200, 120)
#: The ball's colours. A task with no parent gets one from its id; a derived task keeps its parent's, so a
#: video of an image, its upscale and its extension visibly come from that image.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (240, 160, 40),
    (220, 60, 60),
    (60, 170, 230),
    (120, 210, 90),
    (200, 90, 220),
    (240, 230, 80),
    (80, 220, 200),
    (250, 130, 180),
)


@dataclass(frozen=True)
class Clip:
    data: bytes
    sha256: str


@dataclass(frozen=True)
class ClipKind:
    aspect_ratio: str = "2:3"
    mode: str = "normal"
    resolution: str = "480p"
    seconds: int = 6
    colour: int = 0
    #: Drawn into every frame (the prompt's first words and the task id), so clips can be told apart.
    label: str = ""


@dataclass(frozen=True)
class ImageKind:
    aspect_ratio: str = "2:3"
    resolution: str = "480p"
    format: str = "png"
    index: int = 0
    colour: int = 0


def render(kind: ClipKind) -> bytes:
    """The MP4 bytes of one clip (``moov`` first, so a browser can start playing before the end)."""
    width, height = frame_size(kind.aspect_ratio, kind.resolution)
    # Into a file: moving ``moov`` to the front rewrites the file, which FFmpeg does by reopening it.
    with tempfile.TemporaryDirectory(prefix="clip-") as folder:
        path = Path(folder) / "clip.mp4"
        _encode(path, kind, width, height)
        return path.read_bytes()


def render_image(kind: ImageKind) -> bytes:
    """The PNG or JPEG bytes of one image."""
    width, height = frame_size(kind.aspect_ratio, kind.resolution)
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    title = ImageFont.load_default(size=max(14, width // 16))
    radius = min(width, height) // 6
    cx, cy = width // 2, height // 2 + height // 10
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=PALETTE[kind.colour % len(PALETTE)])
    draw.text((width // 2, height // 5), "ImagineQ simulator", font=title, fill="white", anchor="mm")
    label = f"image {kind.index + 1}  {kind.aspect_ratio}  {width}x{height}"
    draw.text((width // 2, height // 5 + width // 12), label, font=title, fill=(180, 180, 200), anchor="mm")
    out = io.BytesIO()
    image.save(out, format="JPEG" if kind.format == "jpeg" else "PNG")
    return out.getvalue()


def _encode(path: Path, kind: ClipKind, width: int, height: int) -> None:
    aspect_ratio, mode = kind.aspect_ratio, kind.mode
    title_size = max(14, width // 16)
    title = ImageFont.load_default(size=title_size)
    detail = ImageFont.load_default(size=max(10, width // 28))
    radius = max(12, min(width, height) // 14)
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "28", "tune": "animation"}
        frames = kind.seconds * FPS
        for index in range(frames):
            image = Image.new("RGB", (width, height), _BACKGROUND)
            draw = ImageDraw.Draw(image)
            x, y = _ball(mode, index / FPS, width - 2 * radius, height // 3)
            ball = PALETTE[kind.colour % len(PALETTE)]
            draw.ellipse((x, height // 2 + y - radius, x + 2 * radius, height // 2 + y + radius), fill=ball)
            draw.text((width // 2, height // 5), "ImagineQ simulator", font=title, fill="white", anchor="mm")
            label = f"{aspect_ratio}  {width}x{height}  mode {mode}"
            draw.text((width // 2, height // 5 + title_size + 8), label, font=detail, fill=(180, 180, 200), anchor="mm")
            if kind.label:
                draw.text((width // 2, height - 28), kind.label, font=detail, fill=(230, 230, 240), anchor="mm")
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
    """Files by kind, each rendered once while it stays among the ``KEPT`` most recently served, in a
    worker thread (a labelled clip is one task's: the cache must not grow with the tasks)."""

    KEPT = 256

    def __init__(self) -> None:
        self._clips: OrderedDict[ClipKind | ImageKind, asyncio.Future[Clip]] = OrderedDict()

    async def get(self, kind: ClipKind | ImageKind) -> Clip:
        future = self._clips.get(kind)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(None, _make, kind)
            self._clips[kind] = future
            while len(self._clips) > self.KEPT:
                self._clips.popitem(last=False)
        else:
            self._clips.move_to_end(kind)
        return await asyncio.shield(future)


def _make(kind: ClipKind | ImageKind) -> Clip:
    data = render(kind) if isinstance(kind, ClipKind) else render_image(kind)
    return Clip(data=data, sha256=hashlib.sha256(data).hexdigest())
