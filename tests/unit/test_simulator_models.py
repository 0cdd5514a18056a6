"""The simulated upstream's models without HTTP: each model's fields (422s naming them), its pool's limits,
the account's createTask rate, outputs and the file store, on a hand-driven clock."""

from __future__ import annotations

from typing import Any

import pytest

from simulator.accounts import Account
from simulator.errors import ApiError
from simulator.options import SimOptions, apply_overrides
from simulator.state import SimState
from simulator.tasks import TaskState


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_state(**overrides: Any) -> tuple[SimState, Clock, Account]:
    options = SimOptions(seed=3, **overrides)
    clock = Clock()
    state = SimState(options, clock=clock)
    return state, clock, state.authenticate("Bearer sim-key")


def create(state: SimState, account: Account, model: str, **inp: Any) -> Any:
    return state.create_task(account, {"model": f"grok-imagine/{model}", "input": inp})


def finish(state: SimState, clock: Clock, *tasks: Any) -> None:
    clock.now = max(task.complete_at for task in tasks) + 0.001
    assert all(task.state_at(clock.now) is TaskState.SUCCESS for task in tasks)


@pytest.mark.parametrize(
    ("model", "inp", "needle"),
    [
        ("text-to-video", {"prompt": "p", "duration": "7"}, "input.duration must be one of 6, 10, 15"),
        ("text-to-video", {"prompt": "p", "resolution": "1080p"}, "input.resolution must be one of 480p, 720p"),
        ("text-to-video", {"prompt": "p", "aspect_ratio": "4:3"}, "input.aspect_ratio must be one of"),
        ("text-to-video", {"prompt": "p", "seed": 1}, "input.seed is not a field of grok-imagine/text-to-video"),
        ("image-to-video", {"prompt": "p"}, "input.image_urls or input.task_id is required, never both"),
        ("image-to-video", {"image_urls": ["http://a/b.png"], "index": 1}, "input.index is only allowed"),
        ("image-to-video", {"image_urls": ["http://a/b.png"], "mode": "spicy"}, "spicy is not available"),
        ("image-to-video", {"image_urls": ["http://a/b.png", "http://a/c.png"]}, "list of 1 to 1 URLs"),
        ("image-to-video", {"task_id": "f" * 32}, "no task"),
        ("text-to-image", {"aspect_ratio": "1:1"}, "input.prompt is required"),
        ("text-to-image", {"prompt": "p", "mode": "fun"}, "input.mode is not a field"),
        ("image-to-image", {"image_urls": []}, "list of 1 to 5 URLs"),
        ("image-to-image", {"image_urls": ["ftp://a/b.png"]}, "image_urls[0] must be an http(s) URL"),
        ("image-to-image", {"image_urls": ["http://a/b.png"], "nsfw_checker": "yes"}, "nsfw_checker must be a boolean"),
        ("upscale", {}, "input.task_id must be a task id"),
        ("extend", {"task_id": "x" * 101}, "at most 100 characters"),
    ],
)
def test_each_models_bad_input_is_a_422_naming_the_field(model: str, inp: dict[str, Any], needle: str) -> None:
    state, _, account = make_state()
    with pytest.raises(ApiError) as caught:
        create(state, account, model, **inp)
    assert caught.value.code == 422 and needle in caught.value.msg


def test_an_unknown_model_is_refused_naming_the_family() -> None:
    state, _, account = make_state()
    with pytest.raises(ApiError, match="model must be one of grok-imagine/text-to-video"):
        state.create_task(account, {"model": "grok-imagine/text-to-music", "input": {"prompt": "p"}})


def test_each_pool_has_its_own_in_progress_limit_and_counts_its_own_peak() -> None:
    state, _, account = make_state(max_in_progress=2, pool_limits={"text-to-image": (3, 100)})
    for _ in range(2):
        create(state, account, "text-to-video", prompt="p")
    with pytest.raises(ApiError, match="too many text-to-video tasks in progress"):
        create(state, account, "text-to-video", prompt="p")
    for _ in range(3):
        create(state, account, "text-to-image", prompt="p")  # another pool: its own room
    with pytest.raises(ApiError, match=r"too many text-to-image tasks in progress \(limit 3\)"):
        create(state, account, "text-to-image", prompt="p")
    pools = state.snapshot()["pools"]
    assert pools["text-to-video"]["peak_in_progress"] == 2 and pools["text-to-image"]["peak_in_progress"] == 3


def test_the_documented_pool_limits_are_the_defaults() -> None:
    state, _, _ = make_state()
    assert state.limits("image-to-video") == (25, 250) and state.limits("text-to-image") == (50, 500)
    assert state.limits("text-to-video") == (30, 300)


def test_the_create_rate_holds_every_model_of_the_account_in_each_rolling_window() -> None:
    state, clock, account = make_state(create_rate=3, create_rate_window_s=10.0)
    create(state, account, "text-to-video", prompt="p")
    create(state, account, "text-to-image", prompt="p")
    with pytest.raises(ApiError):
        create(state, account, "text-to-image", aspect_ratio="4:3")  # a refused request counts too
    with pytest.raises(ApiError, match="3 generation requests per 10 s") as caught:
        create(state, account, "text-to-image", prompt="p")
    assert caught.value.code == 429 and caught.value.retry_after_s == 10
    clock.now += 10.001
    create(state, account, "text-to-image", prompt="p")


def test_text_to_image_returns_the_configured_number_of_images_and_feeds_image_to_video() -> None:
    state, clock, account = make_state(images_per_task=6)
    image = create(state, account, "text-to-image", prompt="p", aspect_ratio="16:9")
    with pytest.raises(ApiError, match="has not succeeded"):
        create(state, account, "image-to-video", task_id=image.task_id)
    finish(state, clock, image)
    urls = state.record_info(account, image.task_id)["resultJson"]
    assert urls.count(".png") == 6
    video = create(state, account, "image-to-video", task_id=image.task_id, index=5, mode="spicy")
    assert (video.kind, video.aspect_ratio, video.mode) == ("video", "16:9", "spicy")
    apply_overrides(state.options, {"images_per_task": 1})
    single = create(state, account, "text-to-image", prompt="p")
    finish(state, clock, single)
    with pytest.raises(ApiError, match="index must be below 1"):
        create(state, account, "image-to-video", task_id=single.task_id, index=1)


def test_upscale_takes_either_kind_of_own_task_and_extend_only_a_video() -> None:
    state, clock, account = make_state(gen_times={"text-to-image": (1, 2), "text-to-video": (1, 2)})
    image = create(state, account, "text-to-image", prompt="p")
    video = create(state, account, "text-to-video", prompt="p", duration=10, resolution="720p")
    finish(state, clock, image, video)
    assert create(state, account, "upscale", task_id=image.task_id).kind == "image"
    assert create(state, account, "upscale", task_id=video.task_id).kind == "video"
    extended = create(state, account, "extend", task_id=video.task_id, extend_times="6", prompt="")
    assert extended.duration_s == 16
    with pytest.raises(ApiError, match="must name a video task"):
        create(state, account, "extend", task_id=image.task_id)


def test_a_derived_task_shows_its_parents_colour_in_its_files() -> None:
    state, clock, account = make_state(gen_times={"text-to-image": (1, 2), "image-to-video": (1, 2)})
    roots = [create(state, account, "text-to-image", prompt=f"p{i}") for i in range(12)]
    assert len({root.colour for root in roots}) > 1  # roots differ (by task id)
    finish(state, clock, *roots)
    for root in roots[:4]:
        video = create(state, account, "image-to-video", task_id=root.task_id, index=0)
        finish(state, clock, video)
        upscaled = create(state, account, "upscale", task_id=root.task_id)
        extended = create(state, account, "extend", task_id=video.task_id, extend_times="6", prompt="")
        assert video.colour == upscaled.colour == extended.colour == root.colour
    # And the colour is in the pixels: the ball of an upscale is its image's.
    from io import BytesIO

    from PIL import Image

    from simulator.app import file_kind
    from simulator.clips import PALETTE, render_image

    parent, child = roots[0], create(state, account, "upscale", task_id=roots[0].task_id)
    for task in (parent, child):
        kind = file_kind(task, 0)
        picture = Image.open(BytesIO(render_image(kind))).convert("RGB")  # type: ignore[arg-type]
        width, height = picture.size
        assert picture.getpixel((width // 2, height // 2 + height // 10)) == PALETTE[parent.colour]


def test_a_task_of_another_account_is_no_parent() -> None:
    state, clock, account = make_state(api_keys=["sim-key", "other-key"])
    image = create(state, account, "text-to-image", prompt="p")
    finish(state, clock, image)
    with pytest.raises(ApiError, match="no task"):
        create(state, state.authenticate("Bearer other-key"), "upscale", task_id=image.task_id)


def test_uploaded_files_expire_after_three_days_and_the_same_name_overwrites() -> None:
    state, clock, account = make_state()
    first = state.upload(account, b"\x89PNG one", "inputs", "a.png", "image/png")
    url = first["downloadUrl"]
    create(state, account, "image-to-video", image_urls=[url])
    state.upload(account, b"\x89PNG two", "inputs", "a.png", "image/png")
    assert state.uploaded_file(account.key_id, "inputs/a.png").data == b"\x89PNG two"
    clock.now += 3 * 86400
    with pytest.raises(ApiError, match=r"image_urls\[0\]: the file could not be fetched"):
        create(state, account, "image-to-video", image_urls=[url])
    with pytest.raises(ApiError) as caught:
        state.upload(account, b"x", "../up", "a.png", "image/png")
    assert caught.value.code == 400


def test_each_task_s_clip_shows_its_prompt_and_id_so_clips_differ_by_task() -> None:
    from simulator.app import file_kind
    from simulator.clips import ClipKind, render

    state, _, account = make_state(video_bytes=0, gen_times={"text-to-video": (1, 2)})
    fox, kite = (create(state, account, "text-to-video", prompt=p) for p in ("A red fox in the snow", "A paper kite"))
    fox_kind, kite_kind = file_kind(fox, 0), file_kind(kite, 0)
    assert isinstance(fox_kind, ClipKind) and isinstance(kite_kind, ClipKind)
    assert fox_kind.label.startswith("A red fox in the snow") and fox.task_id[:8] in fox_kind.label
    assert render(fox_kind) != render(kite_kind)
    assert file_kind(fox, 0) == file_kind(fox, 0)  # one task's clip is the same bytes every time
