"""A small, fast static HTTP/1.1 origin for machines without nginx.

``python -m bench.harness.static_origin --port P --root DIR`` serves the files of DIR (read
once into memory) with keep-alive, on uvloop when installed. It understands exactly the
routes of the nginx origin (see :mod:`bench.harness.origin`):

* ``/{name}`` -> the file ``name``;
* ``/v/{anything}/{name}`` -> the file ``name`` (a unique URL per request for ``miss``);
* ``/probe/{anything}`` -> the file ``probe.jpg`` (load generator capacity probe).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import mimetypes
from pathlib import Path

_MAX_HEAD = 16 * 1024


class Files:
    """Every file of a folder, with its full response head prepared once."""

    def __init__(self, root: Path) -> None:
        self.responses: dict[str, tuple[bytes, bytes]] = {}
        for path in root.iterdir():
            if path.is_file():
                body = path.read_bytes()
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                self.responses[path.name] = (head, body)

    def lookup(self, path: str) -> tuple[bytes, bytes] | None:
        path = path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if parts[0] == "probe":
            return self.responses.get("probe.jpg")
        if parts[0] == "v" and len(parts) == 3:
            return self.responses.get(parts[2])
        return self.responses.get(parts[0]) if len(parts) == 1 else None


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


async def handle(files: Files, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEAD:
                break
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, _, rest = request_line.partition(" ")
            target = rest.rpartition(" ")[0]
            found = files.lookup(target)
            if found is None:
                writer.write(NOT_FOUND)
            else:
                writer.write(found[0])
                if method != "HEAD":
                    writer.write(found[1])
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(port: int, root: Path) -> None:
    files = Files(root)
    server = await asyncio.start_server(
        lambda r, w: handle(files, r, w), "127.0.0.1", port, backlog=1024, limit=_MAX_HEAD
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, args.root))
    else:
        uvloop.run(serve(args.port, args.root))


if __name__ == "__main__":
    main()
