"""Load the Lua scripts kept beside the code in ``core/lua/`` (one file per operation).

``load_script(client, "job_create")`` reads ``core/lua/job_create.lua`` once per process and registers it
once per client (``register_script``), so callers may ask for a script on every call for free. A registered
``Script`` re-loads itself on ``NOSCRIPT`` (a restarted or flushed Redis) when called directly or on a
pipeline; code that sends raw ``EVALSHA`` on a pipeline (to save the pipeline's ``SCRIPT EXISTS`` round
trip) uses :func:`evalsha_pipeline` instead, which re-sends only the commands that met ``NOSCRIPT``.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

_lock = threading.Lock()
_registered: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = weakref.WeakKeyDictionary()


#: A line ``--! include <name>`` stands for the whole of ``core/lua/<name>.lua`` (functions several
#: scripts share; Redis runs each script whole, so they are copied in, not loaded).
_INCLUDE = re.compile(r"^--! include ([a-z_]+)$", re.MULTILINE)


@cache
def script_source(name: str) -> str:
    """The text of ``core/lua/{name}.lua``, its includes filled in."""
    text = resources.files("core").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda match: script_source(match[1]), text)


def load_script(client: redis.Redis, name: str) -> Script:
    """The script ``name`` registered on ``client`` (registered on first use, then cached per client)."""
    with _lock:
        scripts = _registered.setdefault(client, {})
        script = scripts.get(name)
        if script is None:
            script = scripts[name] = client.register_script(script_source(name))
        return script


_registered_async: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def load_async_script(client: Any, name: str) -> Any:
    """:func:`load_script` for an asyncio client (``redis.asyncio``): an ``AsyncScript``."""
    with _lock:
        scripts = _registered_async.setdefault(client, {})
        script = scripts.get(name)
        if script is None:
            script = scripts[name] = client.register_script(script_source(name))
        return script


#: One queued call: (script, keys, args).
ScriptCall = tuple[Script, Sequence[Any], Sequence[Any]]


def evalsha_pipeline(
    client: redis.Redis, calls: Sequence[ScriptCall], *, replicas: int = 0, timeout_ms: int = 0
) -> tuple[list[Any], int]:
    """Run ``calls`` in one non-transactional pipeline: one round trip when the scripts are loaded.

    A result that is an exception other than ``NOSCRIPT`` is returned in place (callers decide); commands
    that met ``NOSCRIPT`` did not run, so they are sent again once their scripts are loaded. With
    ``replicas``, each pipeline ends in ``WAIT replicas timeout_ms`` (on the connection of the writes,
    so it counts the replicas that have them). Returns the results and the fewest replicas any of the
    pipelines was acknowledged by (0 when none was asked for).
    """
    results, acks = _send(client, calls, replicas, timeout_ms)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            script.sha = str(client.script_load(script.script))
        again, again_acks = _send(client, [calls[i] for i in missing], replicas, timeout_ms)
        for i, result in zip(missing, again, strict=True):
            results[i] = result
        acks = min(acks, again_acks)
    return results, acks


def _send(client: redis.Redis, calls: Sequence[ScriptCall], replicas: int, timeout_ms: int) -> tuple[list[Any], int]:
    with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        if replicas:
            pipe.execute_command("WAIT", replicas, timeout_ms)  # type: ignore[no-untyped-call]
        results = list(pipe.execute(raise_on_error=False))
    if not replicas:
        return results, 0
    acks = results.pop()
    return results, int(acks) if isinstance(acks, int) else 0
