"""The HTTP layer of events and queries: the ASGI middleware stack, the routes' endpoints
(``web.events``, ``web.recommendations``, ``web.docs``), the one place errors become JSON
answers (``web.errors``) and the server protocol (``web.protocol``). It turns requests into the
plain values ``ingest`` and ``query`` work with; the app is assembled in ``p13n.app``."""
