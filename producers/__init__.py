"""Producers: the Python API, CLI, batches and HTTP ingress that put jobs on Redis."""
