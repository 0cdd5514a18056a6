"""The whole family with real workers: each model end to end from the Python API, the CLI, HTTP and a batch
file; image inputs uploaded once per content and account; several outputs per job; each pool's own caps;
the account's createTask rate."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import pytest
import requests
from PIL import Image

from core.errors import ValidationError
from core.jobs import Job, JobState
from devstack import services
from devstack.deployment import Deployment, deployment, must, wait_until
from workers.storage import sidecar_key

pytestmark = pytest.mark.integration

TOKEN = "catalog-test-token-0123456789abcdef"


def png(width: int = 128, height: int = 96, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


class ImageHost:
    """A loopback web server serving one PNG, counting every connection made to it."""

    def __init__(self, body: bytes) -> None:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        class Counting(ThreadingHTTPServer):
            def get_request(self) -> tuple[socket.socket, Any]:
                host.connections += 1
                return super().get_request()

        self.connections = 0
        self.server = Counting(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str = "cat.png") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost(png(160, 120, (40, 160, 40)))
    yield host
    host.close()


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory, image_host: ImageHost) -> Iterator[Deployment]:
    with deployment(
        tmp_path_factory.mktemp("catalog"),
        simulator_args=("--gen-time", "0.3:0.8", "--images-per-task", "6", "--time-scale", "1"),
        env={
            "IMAGINEQ_INGRESS_TOKENS": json.dumps([TOKEN]),
            "IMAGINEQ_DOWNLOADS__IMAGE_HOSTS": json.dumps([f"127.0.0.1:{image_host.port}"]),
            "IMAGINEQ_DOCS_ENABLED": "true",
        },
        workers={"submit": 2, "poll": 2, "store": 2},
    ) as deployed:
        yield deployed


def stored(dep: Deployment, job: Job, timeout: float = 90) -> Job:
    (done,) = dep.wait_all([job], timeout=timeout)
    assert done.state is JobState.STORED, (done.state, done.reason, done.error)
    return done


def object_bytes(dep: Deployment, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return bytes(dep.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def sent_input(dep: Deployment, task_id: str) -> dict[str, Any]:
    task = next(t for t in dep.sim("tasks")["tasks"] if t["taskId"] == task_id)
    return dict(task["param"]["input"])


def test_text_to_video_takes_duration_resolution_and_the_new_aspect_ratios(dep: Deployment) -> None:
    dep.sim_config(video_bytes=0)
    try:
        job = dep.producer.enqueue("A harbour at dawn", aspect_ratio="16:9", duration=10, resolution="720p")
        done = stored(dep, job, timeout=120)
    finally:
        dep.sim_config(video_bytes=262144)
    assert sent_input(dep, must(done.task_id)) == {
        "prompt": "A harbour at dawn",
        "aspect_ratio": "16:9",
        "mode": "normal",
        "duration": "10",
        "resolution": "720p",
    }
    body = object_bytes(dep, must(done.s3_uri))
    with av.open(io.BytesIO(body), "r") as container:
        (stream,) = container.streams.video
        assert (stream.width, stream.height) == (1280, 720)
        assert container.duration is not None and 9.5 < container.duration / 1e6 < 10.5


def test_text_to_image_stores_every_image_with_its_own_key_type_and_digest(dep: Deployment) -> None:
    job = dep.producer.enqueue("Six red kites", model="text-to-image", aspect_ratio="1:1")
    done = stored(dep, job)
    assert done.model == "text-to-image" and len(done.outputs) == 6
    assert done.s3_uri == done.outputs[0]["uri"]
    for index, output in enumerate(done.outputs):
        assert output["index"] == index and output["content_type"] == "image/png"
        assert output["uri"].endswith(f"/{done.id}/{index}.png")
        body = object_bytes(dep, output["uri"])
        expected = dep.sim(f"files/{done.task_id}/sha256?index={index}")["sha256"]
        assert hashlib.sha256(body).hexdigest() == output["sha256"] == expected
        with Image.open(io.BytesIO(body)) as image:
            assert image.width == image.height
    sidecar = json.loads(object_bytes(dep, sidecar_key(done.outputs[2]["uri"])))
    assert sidecar["output"] == 2 and sidecar["sha256"] == done.outputs[2]["sha256"]


def test_image_to_video_from_a_file_uploads_it_once_and_keeps_the_original(dep: Deployment, tmp_path: Path) -> None:
    picture = tmp_path / "cat.png"
    picture.write_bytes(png(128, 128, (10, 20, 200)))
    uploads_before = dep.stats()["uploads"]
    first = stored(dep, dep.producer.enqueue("It wakes up", model="image-to-video", image=picture))
    second = stored(dep, dep.producer.enqueue(model="image-to-video", image=picture.read_bytes(), mode="fun"))
    assert dep.stats()["uploads"] == uploads_before + 1  # the same content on the same account: once
    sent = sent_input(dep, must(first.task_id))
    assert sent["image_urls"][0].startswith(dep.simulator.url + "/uploads/")
    assert sent_input(dep, must(second.task_id))["image_urls"] == sent["image_urls"]
    assert "image" not in sent and first.input["image"]["s3"].startswith("s3://imagineq-test/inputs/")
    kept = must(first.s3_uri).removesuffix(".mp4") + "/input-0.png"
    assert object_bytes(dep, kept) == picture.read_bytes()


def test_an_image_is_uploaded_again_once_the_store_may_have_dropped_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The store keeps files 3 simulated days; at 86,400x a simulated day is a wall second, and ImagineQ is
    # told to name an upload again for 2 s only.
    with deployment(
        tmp_path_factory.mktemp("uploads"),
        simulator_args=("--gen-time", "3600:7200", "--time-scale", "86400", "--video-bytes", "65536"),
        env={"IMAGINEQ_UPLOAD_REUSE_S": "2"},
        workers={"submit": 1, "poll": 1, "store": 1},
    ) as dep:
        image = png(100, 100, (90, 90, 10))
        first = stored(dep, dep.producer.enqueue(model="image-to-video", image=image))
        second = stored(dep, dep.producer.enqueue(model="image-to-video", image=image, duration="15"))
        assert dep.stats()["uploads"] == 1
        time.sleep(3.5)  # the simulated store dropped the file (3 s), and the reuse window passed (2 s)
        third = stored(dep, dep.producer.enqueue(model="image-to-video", image=image))
        assert dep.stats()["uploads"] == 2
        assert sent_input(dep, must(third.task_id))["image_urls"] == sent_input(dep, must(first.task_id))["image_urls"]
        assert second.input["duration"] == "15"


def test_derived_models_start_from_a_stored_job_on_its_account(dep: Deployment) -> None:
    image = stored(dep, dep.producer.enqueue("A fox", model="text-to-image", aspect_ratio="9:16"))
    video = stored(dep, dep.producer.enqueue(model="image-to-video", parent=image.id, index=4, mode="spicy"))
    assert sent_input(dep, must(video.task_id)) == {
        "task_id": image.task_id,
        "index": 4,
        "mode": "spicy",
        "duration": "6",
        "resolution": "480p",
    }
    upscaled = stored(dep, dep.producer.enqueue(model="upscale", parent=image.id))
    assert upscaled.outputs[0]["content_type"] == "image/png" and upscaled.pin == image.account
    extended = stored(dep, dep.producer.enqueue("", model="extend", parent=video.id, extend_times=10))
    assert sent_input(dep, must(extended.task_id)) == {
        "task_id": video.task_id,
        "extend_at": 0,
        "extend_times": "10",
    }
    remix = stored(dep, dep.producer.enqueue(model="image-to-image", images=[{"job": image.id, "output": 1}]))
    assert remix.outputs and remix.outputs[0]["content_type"] == "image/jpeg"
    with pytest.raises(ValidationError, match="extend takes a video job"):
        dep.producer.enqueue(model="extend", parent=image.id)
    with pytest.raises(ValidationError, match=r"index: must be 0 to 5 \(got 6\)"):
        dep.producer.enqueue(model="image-to-video", parent=image.id, index=6)


def test_an_image_url_is_fetched_under_the_guard_and_a_host_not_allowed_is_never_connected_to(
    dep: Deployment, image_host: ImageHost
) -> None:
    job = stored(dep, dep.producer.enqueue("Make it winter", model="image-to-image", images=[image_host.url()]))
    assert job.outputs[0]["content_type"] == "image/jpeg"
    assert image_host.connections >= 1
    other = ImageHost(png())
    try:
        with pytest.raises(ValidationError, match=rf"127.0.0.1:{other.port} is not a host images may come from"):
            dep.producer.enqueue(model="image-to-video", image=other.url())
        assert other.connections == 0
    finally:
        other.close()


def test_http_takes_each_model_with_multipart_or_base64_images_and_documents_them(
    dep: Deployment, tmp_path: Path
) -> None:
    web = services.start_web(dep.stack, dep.env)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    schema = requests.get(f"{web.url}/openapi.json", timeout=30).json()
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    titles = [one["title"] for one in body["application/json"]["schema"]["anyOf"][0]["oneOf"]]
    assert titles == [
        "Text to video job",
        "Image to video job",
        "Text to image job",
        "Image to image job",
        "Upscale job",
        "Extend a video job",
    ]
    assert "multipart/form-data" in body

    picture = png(120, 90, (5, 5, 250))
    answer = requests.post(
        f"{web.url}/v1/jobs",
        headers=auth,
        data={"job": json.dumps({"model": "image-to-video", "image": {"upload": "photo"}, "duration": 10})},
        files={"photo": ("photo.png", picture, "image/png")},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["model"] == "image-to-video" and answer.json()["input"]["duration"] == "10"
    answer = requests.post(
        f"{web.url}/v1/jobs",
        headers=auth,
        json=[
            {"model": "image-to-image", "images": [{"base64": base64.b64encode(picture).decode()}]},
            {"model": "text-to-image", "prompt": "A kite"},
        ],
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    for view in answer.json()["jobs"]:
        stored(dep, must(dep.producer.get(view["id"])))

    refused = requests.post(
        f"{web.url}/v1/jobs", headers=auth, json={"model": "text-to-video", "prompt": "x", "duration": 7}, timeout=30
    )
    assert refused.status_code == 422
    assert refused.json()["detail"] == [
        {"loc": ["body", "duration"], "msg": "must be one of 6, 10, 15 (got '7')", "type": "value_error"}
    ]
    not_an_image = requests.post(
        f"{web.url}/v1/jobs",
        headers=auth,
        data={"job": json.dumps({"model": "image-to-video", "image": {"upload": "f"}})},
        files={"f": ("f.png", b"GIF89a not really", "image/png")},
        timeout=30,
    )
    assert not_an_image.status_code == 422
    assert not_an_image.json()["detail"][0]["loc"] == ["body", "image"]
    assert "JPEG, PNG or WEBP" in not_an_image.json()["detail"][0]["msg"]


def test_the_cli_submits_any_model_and_fetches_every_output(dep: Deployment, tmp_path: Path) -> None:
    picture = tmp_path / "dog.png"
    picture.write_bytes(png(96, 128))
    done = dep.cli("submit", "--model", "image-to-video", "--image", str(picture), "--duration", "10", "--wait")
    assert done.returncode == 0, done.stderr
    images = dep.cli("submit", "Two kites", "--model", "text-to-image", "--wait", "--json")
    assert images.returncode == 0, images.stderr
    record = json.loads(images.stdout)
    fetched = dep.cli("fetch", record["id"], str(tmp_path))
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in tmp_path.glob(f"{record['id']}-*.png")) == [
        f"{record['id']}-{n}.png" for n in range(6)
    ]
    one = dep.cli("fetch", record["id"], str(tmp_path / "third.png"), "--index", "2")
    assert one.returncode == 0 and (tmp_path / "third.png").read_bytes()[:4] == b"\x89PNG"
    bad = dep.cli("submit", "x", "--model", "text-to-video", "--resolution", "1080p")
    assert bad.returncode == 2 and "resolution: must be one of 480p, 720p (got '1080p')" in bad.stderr


def test_a_batch_line_may_name_any_model_and_its_fields(dep: Deployment, tmp_path: Path) -> None:
    source = tmp_path / "family.jsonl"
    source.write_text(
        "\n".join(
            json.dumps(line)
            for line in (
                {"id": "v", "prompt": "A bridge", "duration": "15", "resolution": "720p", "aspect_ratio": "9:16"},
                {"id": "i", "model": "text-to-image", "prompt": "A bridge"},
                {"id": "bad", "model": "text-to-image", "prompt": "A bridge", "duration": "6"},
            )
        )
    )
    done = dep.cli("batch", "submit", str(source), "--wait")
    report = done.stdout + done.stderr
    assert "duration: unknown field for text-to-image" in report, report
    made = [t for t in dep.sim("tasks")["tasks"] if t["param"]["input"].get("prompt") == "A bridge"]
    assert sorted(t["model"] for t in made) == ["grok-imagine/text-to-image", "grok-imagine/text-to-video"]
    video = next(t for t in made if t["model"] == "grok-imagine/text-to-video")
    assert video["param"]["input"]["duration"] == "15" and video["param"]["input"]["aspect_ratio"] == "9:16"


def test_two_pools_fill_at_once_each_within_its_own_caps(tmp_path_factory: pytest.TempPathFactory) -> None:
    with deployment(
        tmp_path_factory.mktemp("pools"),
        simulator_args=(
            "--gen-time",
            "1:2",
            "--video-bytes",
            "65536",
            "--max-in-progress",
            "4",
            "--pool-limits",
            json.dumps({"text-to-image": [6, 500]}),
        ),
        env={
            "IMAGINEQ_ACCOUNTS": json.dumps(
                [
                    {
                        "name": "main",
                        "api_key": "sim-key",
                        "base_url": "{simulator}",
                        "max_in_progress": 4,
                        "pools": {"text-to-image": {"max_in_progress": 6}},
                    }
                ]
            )
        },
        workers={"submit": 4, "poll": 4, "store": 4},
    ) as dep:
        jobs = dep.producer.enqueue_many(
            [{"prompt": f"video {i}"} for i in range(16)]
            + [{"model": "text-to-image", "prompt": f"image {i}"} for i in range(24)]
        )
        done = dep.wait_all(jobs, timeout=120)
        assert all(job.state is JobState.STORED for job in done), [(j.state, j.reason) for j in done]
        stats = dep.stats()
        assert stats["rate_limited"] == 0
        pools = stats["pools"]
        assert pools["text-to-video"]["peak_in_progress"] == 4  # each pool full, and never over
        assert pools["text-to-image"]["peak_in_progress"] == 6


def test_the_create_rate_holds_a_burst_of_sixty_at_twenty_per_ten_seconds(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with deployment(
        tmp_path_factory.mktemp("rate"),
        simulator_args=("--gen-time", "0.5:1", "--video-bytes", "65536", "--create-rate", "20"),
        env={
            "IMAGINEQ_ACCOUNTS": json.dumps(
                [{"name": "main", "api_key": "sim-key", "base_url": "{simulator}", "create_requests_per_window": 20}]
            )
        },
        workers={"submit": 4, "poll": 4, "store": 4},
    ) as dep:
        started = time.monotonic()
        jobs = dep.producer.enqueue_many([{"prompt": f"burst {i}"} for i in range(60)])
        done = dep.wait_all(jobs, timeout=120)
        elapsed = time.monotonic() - started
        assert all(job.state is JobState.STORED for job in done)
        stats = dep.stats()
        assert stats["rate_limited"] == 0 and stats["created"] == 60
        assert stats["max_create_requests_in_window"] <= 20
        assert elapsed > 20  # three windows' worth of requests: the rate held, it was not outrun
        wait_until(lambda: dep.stats()["in_progress"] == 0, 30, "the burst to finish upstream")
