"""The submit message we build equals what Celery's own send_task puts on the Redis list."""

import base64
import json

import pytest

from config.celery import broker_prefix
from config.settings import load_settings
from core.jobs import Job, JobRequest, Priority
from core.keys import Keys
from core.messages import submit_message
from workers.celery import create_app

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("priority", [0, 9])
def test_submit_message_matches_what_celery_sends(redis_url, redis_client, priority):
    settings = load_settings(redis_url=redis_url, api_key="k")
    app = create_app(settings)
    app.send_task("imagineq.submit", args=("job-1",), priority=priority)
    job = Job.new(JobRequest(prompt="p", priority=Priority.BATCH if priority else Priority.INTERACTIVE), job_id="job-1")
    ours = submit_message(job, keys=Keys(settings.redis_prefix))

    # Celery put its message on the very list we push ours to.
    theirs = json.loads(redis_client.lpop(ours.queue_key))
    mine = json.loads(ours.payload)

    assert set(mine) == set(theirs)
    assert set(mine["headers"]) == set(theirs["headers"])
    assert set(mine["properties"]) == set(theirs["properties"]) - {"reply_to"}
    assert json.loads(base64.b64decode(mine["body"])) == json.loads(base64.b64decode(theirs["body"]))
    for field in ("lang", "task", "retries", "timelimit", "argsrepr", "kwargsrepr", "eta", "expires", "group"):
        assert mine["headers"][field] == theirs["headers"][field], field
    for field in ("delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert mine["properties"][field] == theirs["properties"][field], field
    assert mine["headers"]["id"] == mine["headers"]["root_id"] == mine["properties"]["correlation_id"]


def test_queue_keys_follow_kombus_priority_lists():
    keys = Keys(load_settings(redis_prefix="iq").redis_prefix)
    assert keys.broker_prefix == broker_prefix(load_settings(redis_prefix="iq"))
    assert keys.broker_queue("submit", 0) == "iq:celery:submit"
    assert keys.broker_queue("submit", 9) == "iq:celery:submit:9"
    assert keys.broker_queue("submit", 4) == "iq:celery:submit:3"
