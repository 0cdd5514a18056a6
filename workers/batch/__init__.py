"""Batches: JSONL files of prompts read into jobs, their records and manifests, the nightly inbox.

- :mod:`~workers.batch.lines`: one line parsed into a request (or a bad line), batch ids, line keys;
- :mod:`~workers.batch.locations`: local paths and ``s3://`` URIs read, listed, moved and written alike;
- :mod:`~workers.batch.reader`: a file read as a stream into jobs, chunk by chunk;
- :mod:`~workers.batch.store`: the batch record in Redis, its progress and its results manifest;
- :mod:`~workers.batch.inbox`: the nightly pickup of every file under the inbox prefix;
- :mod:`~workers.batch.nightly`: the beat task that runs it.
"""
