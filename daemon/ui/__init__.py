"""The local web UI: the queue page, its JSON API and its live stream (the top layer, beside
``cli``; it serves, the command line prints).

``server`` runs uvicorn in a thread (``WebUI``, a companion of `dropforge run`, or alone for
`dropforge serve`); ``app`` builds the Starlette application: the page, ``/api/`` (every action
calls ``runtime.control``, as the command line does) and ``/files/`` (outputs, images only);
``security`` guards it (loopback or a token, a Host allow-list, CSRF and same-origin checks,
no CORS); ``snapshot`` is what the page shows and ``stream`` pushes it as server-sent events
whenever the journal changes. ``templates/`` and ``static/`` hold the page and its one
hand-written JavaScript module; nothing is fetched from elsewhere.
"""
