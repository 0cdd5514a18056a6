"""Flower's configuration file (``celery -A workers flower`` reads it from its working directory).

Flower reads its basic-auth credentials from ``FLOWER_BASIC_AUTH`` in its environment, which keeps the
password off the command line; this file makes that variable required, so a Flower started without it
exits at once instead of serving every task's details to anyone.
"""

import os
import sys

if not os.environ.get("FLOWER_BASIC_AUTH", "").strip():
    sys.exit("flower: set FLOWER_BASIC_AUTH=user:password (Flower reads it from its environment)")
