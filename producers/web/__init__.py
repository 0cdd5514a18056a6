"""The HTTP ingress (``producers.http:app``), one concept a module.

- :mod:`~producers.web.app`: the FastAPI application built from settings;
- :mod:`~producers.web.context`: what the handlers share (clients, callback receiver, metrics, tokens);
- :mod:`~producers.web.jobs_routes` and :mod:`~producers.web.listing`: the jobs API and its paging;
- :mod:`~producers.web.ops_routes`: upstream callbacks, ``/healthz``, ``/metrics``;
- :mod:`~producers.web.models`: request and response shapes; :mod:`~producers.web.handlers`: error answers;
- :mod:`~producers.web.body_limit`: the request body cap.
"""
