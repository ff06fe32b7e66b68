"""The SAF AIS client library: blocking calls, callbacks run in ``dispatch()``.

Modules: ``saf.clm`` (cluster membership), ``saf.errors`` (SaErrorT as
exceptions), ``saf.types`` (constants and value types).  Programs find the
local executive through ``$AIS_SOCKET`` (default ``/var/run/ais/aisexec.sock``).
The library uses only ``socket``, ``select`` and ``struct``; it never imports
gevent or the executive.
"""
