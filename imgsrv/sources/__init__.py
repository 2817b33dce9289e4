"""Source images: what a request names, checked, then fetched over http(s) or from local files.

Two steps, kept apart on purpose:

* :func:`resolve_source` (:mod:`~imgsrv.sources.resolve`) is pure. It turns what the URL grammar
  carried into one absolute, canonical source string (part of the cache key) and refuses what
  can be refused without I/O.
* :class:`SourceFetcher` (:mod:`~imgsrv.sources.fetcher`) downloads it, with connect/read
  timeouts, a total deadline, a byte limit enforced while streaming and redirects followed by
  hand, through the SSRF-guarded transport (:mod:`~imgsrv.sources.transport`), whose address
  policy lives in :mod:`~imgsrv.sources.addresses`; ``local://`` sources are read by
  :mod:`~imgsrv.sources.local`.
"""

from imgsrv.sources.addresses import address_allowed
from imgsrv.sources.fetcher import SourceFetcher
from imgsrv.sources.resolve import resolve_source
from imgsrv.sources.source_bytes import SourceBytes
from imgsrv.sources.transport import GuardedNetworkBackend, GuardedTransport

__all__ = [
    "GuardedNetworkBackend",
    "GuardedTransport",
    "SourceBytes",
    "SourceFetcher",
    "address_allowed",
    "resolve_source",
]
