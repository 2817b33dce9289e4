"""imgsrv: a synchronous, low-latency image transform HTTP server on libvips."""

__version__ = "0.1.0"
