"""The README says what the code does: its commands, its URLs, its option and error tables."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from imgsrv import cli, errors
from imgsrv.app import create_app
from imgsrv.config import Settings, load_settings
from imgsrv.spec import OPTION_NAMES

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
CI_RUN = REPO / ".ci" / "run"

SERVE_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && imgsrv serve"
TEST_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]' && pytest"
KEY = "a1" * 32
SALT = "b2" * 16


def code_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)]


def curl_urls(text: str) -> list[str]:
    return re.findall(r"curl -o \S+ '([^']+)'", text)


# --------------------------------------------------------------------------- commands


def test_readme_opens_with_the_two_fresh_machine_commands() -> None:
    before_first_section = README.split("\n## ", 1)[0]
    assert before_first_section.startswith("# imgsrv\n")
    assert code_blocks(before_first_section) == [SERVE_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    assert TEST_COMMAND in CI_RUN.read_text().splitlines()


def test_ci_script_is_strict_and_executable() -> None:
    text = CI_RUN.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "ruff check" in text and "mypy --strict imgsrv" in text
    assert os.access(CI_RUN, os.X_OK)


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize("name", OPTION_NAMES)
def test_every_option_name_is_in_the_options_table(name: str) -> None:
    table_rows = [line for line in README.splitlines() if line.startswith("| `")]
    assert any(f"`{name}`" in row.split("|")[1] for row in table_rows), name


def error_statuses() -> list[int]:
    found: set[int] = set()
    pending: list[type[errors.ImgsrvError]] = [errors.ImgsrvError]
    while pending:
        cls = pending.pop()
        found.add(cls.status)
        pending.extend(cls.__subclasses__())
    return sorted(found - {500})


@pytest.mark.parametrize("status", error_statuses())
def test_every_error_status_is_in_the_errors_table(status: int) -> None:
    assert f"\n| {status} | " in README


# --------------------------------------------------------------------------- the examples work


@pytest.fixture(scope="module")
def sample_settings() -> Settings:
    """The embedded default as a fresh install has it: shipped samples, no Redis, unsigned."""
    return load_settings({}, access_log=False, embedded_redis=False)


@pytest.fixture(scope="module")
def sample_client(sample_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(sample_settings)) as client:
        yield client


def test_first_image_curl_lines_work(sample_client: TestClient) -> None:
    urls = curl_urls(README.split("## First image in a minute", 1)[1])
    assert len(urls) == 2
    bodies = []
    for url in urls:
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == ("127.0.0.1", 8080)
        response = sample_client.get(parts.path + ("?" + parts.query if parts.query else ""))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/webp"
        bodies.append(response.content)
    assert bodies[0] == bodies[1]  # the two forms name the same transform


@pytest.mark.parametrize("query_form", [False, True])
def test_signing_steps_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], query_form: bool
) -> None:
    for name in [n for n in os.environ if n.startswith("IMGSRV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IMGSRV_SIGNING_KEY", KEY)
    monkeypatch.setenv("IMGSRV_SIGNING_SALT", SALT)
    args = ["sign", "local://sample.jpg", "rs:cover:300:200", "--ext", "webp"]
    assert cli.main(args + (["--query"] if query_form else [])) == 0
    url = urlsplit(capsys.readouterr().out.strip())
    target = url.path + ("?" + url.query if url.query else "")
    signed = load_settings({}, signing_key=KEY, signing_salt=SALT, access_log=False)
    with TestClient(create_app(signed)) as client:
        assert client.get(target).status_code == 200
        tampered = target.replace("300", "301")
        assert client.get(tampered).status_code == 403
