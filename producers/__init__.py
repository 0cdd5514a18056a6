"""Producers: the Python API, CLI, batches and HTTP ingress that put jobs on Redis.

>>> from producers import enqueue, wait
>>> job = enqueue("A red fox runs through snow, tracking shot", aspect_ratio="3:2")
>>> wait(job.id, timeout=300).s3_uri
"""

from producers.api import Producer, enqueue, enqueue_many, get, wait

__all__ = ["Producer", "enqueue", "enqueue_many", "get", "wait"]
