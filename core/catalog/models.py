"""The Grok Imagine family, one declaration per model (``../shared/upstream-grok-imagine-family.md``
gathers the facts and their sources).

Where the upstream's pages disagree, both are accepted: ``duration`` takes ``"15"`` (newer specs) besides
``"6"`` and ``"10"``; upscale takes an image or a video parent; image-to-image one image to five. Where
they are silent (the limits of image-to-image, upscale and extend), the defaults are conservative and
every one is a setting (``models``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from core.catalog.fields import REQUIRED, Choice, Flag, Image, Images, Integer, JobId, Text
from core.catalog.spec import ModelSpec, ParentRule, PriceRule
from core.errors import ValidationError

PROMPT_MAX_CHARS: Final = 5000
ASPECT_RATIOS: Final = ("2:3", "3:2", "1:1", "16:9", "9:16")
MODES: Final = ("fun", "normal", "spicy")
DURATIONS: Final = ("6", "10", "15")
RESOLUTIONS: Final = ("480p", "720p")
EXTEND_TIMES: Final = ("6", "10")
#: Images a text-to-image task may return (kie.ai's image-to-video takes ``index`` 0–5 of them).
IMAGES_PER_TASK: Final = 6
#: Credits per second of video by resolution, and per image task (published price tables).
VIDEO_CREDITS_PER_S: Final = {"480p": 2.4, "720p": 4.5}
IMAGE_CREDITS: Final = 4.0


def _prompt(required: bool = True, *, blank: bool = False) -> Text:
    description = "What to make; at most 5,000 characters" + ("" if required else " (optional)")
    return Text("prompt", description, default=REQUIRED if required else ("" if blank else None), blank=blank)


_ASPECT_RATIO = Choice("aspect_ratio", "Width to height", default="2:3", choices=ASPECT_RATIOS)
_MODE = Choice("mode", "How the motion is interpreted", default="normal", choices=MODES)
_DURATION = Choice("duration", "Seconds of video", default="6", choices=DURATIONS, numbers=True)
_RESOLUTION = Choice("resolution", "Video resolution", default="480p", choices=RESOLUTIONS)


def _one_source(values: Mapping[str, Any]) -> None:
    """image-to-video starts from an image, or from image ``index`` of a parent text-to-image job."""
    if "image" in values and "parent" in values:
        raise ValidationError("image", "give an image or a parent job (a text-to-image job and an index), not both")
    if "image" not in values and "parent" not in values:
        raise ValidationError("image", "is required (or a parent: a text-to-image job, with an index)")
    if "index" in values and "parent" not in values:
        raise ValidationError("index", "goes with a parent job only (image N of that job's images)")
    if "image" in values and values.get("mode") == "spicy":
        raise ValidationError("mode", "spicy is not available with an image of your own (only from a parent job)")


TEXT_TO_VIDEO: Final = ModelSpec(
    name="grok-imagine/text-to-video",
    short="text-to-video",
    title="Text to video",
    output="video",
    max_outputs=1,
    fields=(_prompt(), _ASPECT_RATIO, _MODE, _DURATION, _RESOLUTION),
    upstream_names={},
    rules=(),
    default_in_progress=30,
    default_per_hour=300,
    generation_s=(10.0, 25.0),
    price=PriceRule(per_second=VIDEO_CREDITS_PER_S, seconds_field="duration"),
)

IMAGE_TO_VIDEO: Final = ModelSpec(
    name="grok-imagine/image-to-video",
    short="image-to-video",
    title="Image to video",
    output="video",
    max_outputs=1,
    fields=(
        Image("image", "The image to animate (JPEG, PNG or WEBP, at most 10 MB)", default=None),
        JobId("parent", "A text-to-image job whose image to animate (instead of an image)", default=None),
        Integer("index", "Which image of the parent job (0-5)", default=None, minimum=0, maximum=IMAGES_PER_TASK - 1),
        _prompt(required=False),
        _MODE,
        _DURATION,
        _RESOLUTION,
    ),
    upstream_names={"image": None, "parent": None},
    rules=(_one_source,),
    default_in_progress=25,
    default_per_hour=250,
    generation_s=(15.0, 30.0),
    price=PriceRule(per_second=VIDEO_CREDITS_PER_S, seconds_field="duration"),
    parent=ParentRule(outputs=("image",)),
)

TEXT_TO_IMAGE: Final = ModelSpec(
    name="grok-imagine/text-to-image",
    short="text-to-image",
    title="Text to image",
    output="image",
    max_outputs=IMAGES_PER_TASK,
    fields=(_prompt(), _ASPECT_RATIO),
    upstream_names={},
    rules=(),
    default_in_progress=50,
    default_per_hour=500,
    generation_s=(5.0, 15.0),
    price=PriceRule(per_task=IMAGE_CREDITS),
)

IMAGE_TO_IMAGE: Final = ModelSpec(
    name="grok-imagine/image-to-image",
    short="image-to-image",
    title="Image to image",
    output="image",
    max_outputs=IMAGES_PER_TASK,
    fields=(
        Images("images", "The image to change (the upstream's schema takes up to 5)", max_items=5),
        _prompt(required=False),
        Flag("nsfw_checker", "Ask the upstream to check the result", default=None),
    ),
    upstream_names={"images": None},
    rules=(),
    default_in_progress=10,
    default_per_hour=100,
    generation_s=(5.0, 15.0),
    price=PriceRule(per_task=IMAGE_CREDITS),
    documented=False,
)

UPSCALE: Final = ModelSpec(
    name="grok-imagine/upscale",
    short="upscale",
    title="Upscale",
    output="image",  # an image parent gives an image, a video parent a video (see output_of)
    max_outputs=1,
    fields=(JobId("parent", "The job to upscale (an image or a video job)"),),
    upstream_names={"parent": None},
    rules=(),
    default_in_progress=10,
    default_per_hour=100,
    generation_s=(10.0, 30.0),
    price=PriceRule(per_task=10.0, per_parent={"image": 10.0, "video": 30.0}),
    parent=ParentRule(outputs=("image", "video")),
    documented=False,
)

EXTEND: Final = ModelSpec(
    name="grok-imagine/extend",
    short="extend",
    title="Extend a video",
    output="video",
    max_outputs=1,
    fields=(
        JobId("parent", "The video job to continue"),
        _prompt(required=False, blank=True),
        Integer("extend_at", "Where to continue from, in seconds", default=0, minimum=0, maximum=60),
        Choice("extend_times", "Seconds to add", default="6", choices=EXTEND_TIMES, numbers=True),
    ),
    upstream_names={"parent": None},
    rules=(),
    default_in_progress=10,
    default_per_hour=100,
    generation_s=(10.0, 25.0),
    price=PriceRule(per_second={"": VIDEO_CREDITS_PER_S["480p"]}, seconds_field="extend_times"),
    parent=ParentRule(outputs=("video",)),
    documented=False,
)

#: Every model, in the order they are shown.
FAMILY: Final = (TEXT_TO_VIDEO, IMAGE_TO_VIDEO, TEXT_TO_IMAGE, IMAGE_TO_IMAGE, UPSCALE, EXTEND)
