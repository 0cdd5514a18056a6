"""Outbound webhooks: every event of the events stream, POSTed to the endpoints that want it, signed the
Standard Webhooks way, delivered at least once.

- **Who gets what** (:mod:`.targets`): a job's own ``notify_url`` gets that job's events (signed with
  ``notify.signing_secret``); a principal's ``webhooks`` endpoints get the events of its jobs that they
  subscribe to, and an admin's ``batch.completed`` too (each signed with its endpoint's secret).
- **Dispatching** (:mod:`.dispatch`): the ``notify`` worker runs a dispatcher thread that reads the events
  stream as the consumer group ``notify`` (so an event is handed out once, and one a dead dispatcher
  held is claimed again), writes one delivery record per event and endpoint (its id derived from both, so
  doing it twice writes nothing new), publishes an ``imagineq.deliver`` task on the ``notify`` queue for
  it, and only then acknowledges the event. The same thread publishes the deliveries whose retry is due
  and those whose worker died while sending.
- **Delivering** (:mod:`.deliver`): one attempt per task: the endpoint's circuit breaker first (an endpoint
  that failed ``breaker_failures`` times in a row is left alone for a while: its deliveries wait without
  a request, so one dead receiver never slows the others), then the POST through the same connection guard
  as result downloads (public addresses only unless allowed; no redirect followed; timeouts; the answer
  read up to a cap). A 2xx ends it; anything else retries with exponential backoff and jitter until
  ``notify.retry_for_s`` after the first attempt. Every attempt is logged on the job (status, latency).

Secrets never leave the settings: a delivery record names its endpoint (``job`` or
``principal:<name>:<n>``) and the secret is looked up when signing.
"""
