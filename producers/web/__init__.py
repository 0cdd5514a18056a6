"""The HTTP API of the ``web`` process (``producers.http:app``, with the dashboard on top), one concept a module.

- :mod:`~producers.web.app`: the FastAPI application built from settings;
- :mod:`~producers.web.context`: what the handlers share (clients, callback receiver, metrics, tokens);
- :mod:`~producers.web.jobs_routes` and :mod:`~producers.web.listing`: the jobs API and its paging;
- :mod:`~producers.web.events_routes`: the events stream;
- :mod:`~producers.web.ops_routes`: upstream callbacks, ``/healthz``, ``/metrics``;
- :mod:`~producers.web.callbacks`: checking an upstream callback; :mod:`~producers.web.metrics`: the
  Prometheus collector;
- :mod:`~producers.web.principals`: tenants and their limits; :mod:`~producers.web.throttle`: failed
  sign-ins; :mod:`~producers.web.protocol`: deadlines on reading a request and a cap on each client's
  connections;
- :mod:`~producers.web.models`: request and response shapes; :mod:`~producers.web.handlers`: error answers;
- :mod:`~producers.web.body_limit`: the request body cap.
"""
