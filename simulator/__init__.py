"""A local stand-in for the Apikley market API (grok-imagine/text-to-video).

Launch contract: ``python -m simulator --port 0 ...`` prints exactly one line
``simulator listening on http://HOST:PORT`` on stdout once it accepts connections, then serves
until SIGTERM/SIGINT. See ``python -m simulator --help`` and ARCHITECTURE.md, "The simulator".
"""

from simulator.server import main

__all__ = ["main"]
