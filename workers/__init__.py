"""Workers: Celery app and tasks, upstream client, quota limiter, job store, S3 storage."""
