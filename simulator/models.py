"""The models the simulated upstream offers, as its documentation describes them: each model's input
fields (every failure a 422 whose msg names ``input.<field>`` and what it allows), its quota pool's limits,
its generation time and what it returns.

Written from the upstream's pages (``../shared/upstream-grok-imagine-family.md``), not from ImagineQ's
catalog: the simulator is the other side of the wire. Where the pages disagree, both are accepted
(``duration`` "15", an upscale of an image or a video task, a number where a numeric string is documented).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from simulator.errors import ApiError

Kind = Literal["video", "image"]

MAX_PROMPT_CHARS = 5000
ASPECT_RATIOS = ("2:3", "3:2", "1:1", "16:9", "9:16")
MODES = ("fun", "normal", "spicy")
DURATIONS = ("6", "10", "15")
RESOLUTIONS = ("480p", "720p")
EXTEND_TIMES = ("6", "10")
MAX_TASK_ID_CHARS = 100


@dataclass(frozen=True)
class Parent:
    """A task an input names (``task_id``): its id, model, kind of output and images made."""

    task_id: str
    model: str
    kind: Kind
    outputs: int


#: Looks a task up for the calling account: the task's parent facts, or raises 422.
FindParent = Callable[[str, str], Parent]
#: Checks an ``image_urls`` entry the upstream would fetch (422 when it cannot).
CheckImage = Callable[[str, str], None]


@dataclass(frozen=True)
class Checked:
    """A valid input: what the task makes."""

    kind: Kind
    aspect_ratio: str = "2:3"
    mode: str = "normal"
    duration_s: int = 6
    resolution: str = "480p"
    parent: Parent | None = None
    prompt: str = ""


@dataclass(frozen=True)
class Model:
    name: str
    pool: str
    in_progress: int
    per_window: int
    gen_time: tuple[float, float]
    check: Callable[[Mapping[str, Any], FindParent, CheckImage], Checked]


def _invalid(msg: str) -> ApiError:
    return ApiError(422, msg)


def _known(inp: Mapping[str, Any], model: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(inp) - set(allowed))
    if unknown:
        raise _invalid(f"input.{unknown[0]} is not a field of {model} (fields: {', '.join(allowed)})")


def _prompt(inp: Mapping[str, Any], *, required: bool, blank: bool = False) -> str:
    prompt = inp.get("prompt")
    if prompt is None:
        if required:
            raise _invalid("input.prompt is required")
        return ""
    if not isinstance(prompt, str):
        raise _invalid("input.prompt must be a string")
    if not blank and not prompt.strip():
        raise _invalid("input.prompt must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _invalid(f"input.prompt must be at most {MAX_PROMPT_CHARS} characters (got {len(prompt)})")
    return prompt


def _choice(inp: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str, *, numeric: bool = False) -> str:
    value = inp.get(name, default)
    if numeric and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value not in allowed:
        raise _invalid(f"input.{name} must be one of {', '.join(allowed)}")
    return str(value)


def _task_id(inp: Mapping[str, Any]) -> str:
    task_id = inp.get("task_id")
    if not isinstance(task_id, str) or not task_id.strip():
        raise _invalid("input.task_id must be a task id (a string)")
    if len(task_id) > MAX_TASK_ID_CHARS:
        raise _invalid(f"input.task_id must be at most {MAX_TASK_ID_CHARS} characters")
    return task_id


def _image_urls(inp: Mapping[str, Any], check: CheckImage, *, most: int) -> list[str]:
    urls = inp.get("image_urls")
    if not isinstance(urls, list) or not 1 <= len(urls) <= most:
        raise _invalid(f"input.image_urls must be a list of 1 to {most} URLs")
    for index, url in enumerate(urls):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _invalid(f"input.image_urls[{index}] must be an http(s) URL")
        check(f"input.image_urls[{index}]", url)
    return urls


def _text_to_video(inp: Mapping[str, Any], find: FindParent, image: CheckImage) -> Checked:
    _known(inp, "grok-imagine/text-to-video", ("prompt", "aspect_ratio", "mode", "duration", "resolution"))
    return Checked(
        kind="video",
        prompt=_prompt(inp, required=True),
        aspect_ratio=_choice(inp, "aspect_ratio", ASPECT_RATIOS, "2:3"),
        mode=_choice(inp, "mode", MODES, "normal"),
        duration_s=int(_choice(inp, "duration", DURATIONS, "6", numeric=True)),
        resolution=_choice(inp, "resolution", RESOLUTIONS, "480p"),
    )


def _image_to_video(inp: Mapping[str, Any], find: FindParent, image: CheckImage) -> Checked:
    model = "grok-imagine/image-to-video"
    _known(inp, model, ("image_urls", "task_id", "index", "prompt", "mode", "duration", "resolution"))
    if ("image_urls" in inp) == ("task_id" in inp):
        raise _invalid("input.image_urls or input.task_id is required, never both")
    if "index" in inp and "task_id" not in inp:
        raise _invalid("input.index is only allowed with input.task_id")
    mode = _choice(inp, "mode", MODES, "normal")
    parent = None
    aspect_ratio = "2:3"
    if "image_urls" in inp:
        _image_urls(inp, image, most=1)
        if mode == "spicy":
            raise _invalid("input.mode spicy is not available with external images (image_urls)")
    else:
        parent = find("input.task_id", _task_id(inp))
        if parent.model != "grok-imagine/text-to-image":
            raise _invalid("input.task_id must name a grok-imagine/text-to-image task")
        index = inp.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 5:
            raise _invalid("input.index must be an integer from 0 to 5")
        if index >= parent.outputs:
            raise _invalid(f"input.index must be below {parent.outputs} (the images of that task)")
    return Checked(
        kind="video",
        prompt=_prompt(inp, required=False),
        aspect_ratio=aspect_ratio,
        mode=mode,
        duration_s=int(_choice(inp, "duration", DURATIONS, "6", numeric=True)),
        resolution=_choice(inp, "resolution", RESOLUTIONS, "480p"),
        parent=parent,
    )


def _text_to_image(inp: Mapping[str, Any], find: FindParent, image: CheckImage) -> Checked:
    _known(inp, "grok-imagine/text-to-image", ("prompt", "aspect_ratio"))
    return Checked(
        kind="image",
        prompt=_prompt(inp, required=True),
        aspect_ratio=_choice(inp, "aspect_ratio", ASPECT_RATIOS, "2:3"),
    )


def _image_to_image(inp: Mapping[str, Any], find: FindParent, image: CheckImage) -> Checked:
    _known(inp, "grok-imagine/image-to-image", ("image_urls", "prompt", "nsfw_checker"))
    _image_urls(inp, image, most=5)
    if "nsfw_checker" in inp and not isinstance(inp["nsfw_checker"], bool):
        raise _invalid("input.nsfw_checker must be a boolean")
    return Checked(kind="image", prompt=_prompt(inp, required=False), aspect_ratio="1:1")


def _upscale(inp: Mapping[str, Any], find: FindParent, image: CheckImage) -> Checked:
    _known(inp, "grok-imagine/upscale", ("task_id",))
    parent = find("input.task_id", _task_id(inp))
    return Checked(kind=parent.kind, resolution="720p", parent=parent)


def _extend(inp: Mapping[str, Any], find: FindParent, image: CheckImage) -> Checked:
    _known(inp, "grok-imagine/extend", ("task_id", "prompt", "extend_at", "extend_times"))
    parent = find("input.task_id", _task_id(inp))
    if parent.kind != "video":
        raise _invalid("input.task_id must name a video task")
    extend_at = inp.get("extend_at", 0)
    if isinstance(extend_at, bool) or not isinstance(extend_at, int) or extend_at < 0:
        raise _invalid("input.extend_at must be a non-negative integer (seconds)")
    extend_times = _choice(inp, "extend_times", EXTEND_TIMES, "6", numeric=True)
    return Checked(
        kind="video", prompt=_prompt(inp, required=False, blank=True), duration_s=int(extend_times), parent=parent
    )


#: Credits per second of video by resolution, and per task of the other models (the published price tables:
#: ``upstream-grok-imagine-family.md``; 1 credit is about $0.005).
VIDEO_CREDITS_PER_S = {"480p": 2.4, "720p": 4.5}
TASK_CREDITS = {"grok-imagine/text-to-image": 4.0, "grok-imagine/image-to-image": 4.0}
UPSCALE_CREDITS = {"image": 10.0, "video": 30.0}


def price(model: str, checked: Checked) -> float:
    """What a task of ``model`` with these inputs costs: video by its seconds and resolution (an extension by
    the seconds it adds, at 480p), an upscale by its parent's kind, an image per task."""
    if model == "grok-imagine/upscale":
        return UPSCALE_CREDITS[checked.kind]
    if model in TASK_CREDITS:
        return TASK_CREDITS[model]
    rate = VIDEO_CREDITS_PER_S["480p" if model == "grok-imagine/extend" else checked.resolution]
    return round(rate * checked.duration_s, 2)


MODELS: dict[str, Model] = {
    model.name: model
    for model in (
        Model("grok-imagine/text-to-video", "text-to-video", 30, 300, (10.0, 25.0), _text_to_video),
        Model("grok-imagine/image-to-video", "image-to-video", 25, 250, (15.0, 30.0), _image_to_video),
        Model("grok-imagine/text-to-image", "text-to-image", 50, 500, (5.0, 15.0), _text_to_image),
        # Limits the upstream does not publish: ImagineQ's conservative defaults, settable here too.
        Model("grok-imagine/image-to-image", "image-to-image", 10, 100, (5.0, 15.0), _image_to_image),
        Model("grok-imagine/upscale", "upscale", 10, 100, (10.0, 30.0), _upscale),
        Model("grok-imagine/extend", "extend", 10, 100, (10.0, 25.0), _extend),
    )
}
POOLS = tuple(model.pool for model in MODELS.values())
