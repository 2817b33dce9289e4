"""Shared fixtures: the test corpus, settings, and a running app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from imgsrv.app import create_app
from imgsrv.config import Settings, load_settings
from tests.corpus import IMAGES as CORPUS_IMAGES
from tests.origin import origin_fixture, origin_server_fixture  # noqa: F401
from tests.redis_topologies import (  # noqa: F401
    cluster_deployment_fixture,
    sentinel_deployment_fixture,
)
from tests.servers import RedisProcess

REPO = Path(__file__).resolve().parents[1]


def corpus_settings(**overrides: object) -> Settings:
    """Settings serving the corpus as local:// sources, unsigned, quiet."""
    values: dict[str, object] = {"local_root": str(CORPUS_IMAGES), "access_log": False}
    values.update(overrides)
    return load_settings({}, **values)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return CORPUS_IMAGES


@pytest.fixture(scope="module")
def client(corpus_dir: Path) -> Iterator[TestClient]:
    """A real app (real libvips, real pool) serving the corpus through local:// sources."""
    with TestClient(create_app(corpus_settings())) as test_client:
        yield test_client


class LiveServer:
    """uvicorn serving an app on a free 127.0.0.1 port, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        import socket
        import threading

        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A real redis-server of this test alone (append-only file on), on a unix socket."""
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()
