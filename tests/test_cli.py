"""The ``imgsrv`` command, run as a real process where it matters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from imgsrv import cli
from imgsrv.config import load_settings, settings_fields

KEY = "0123456789abcdef" * 4
SALT = "fedcba9876543210" * 2


def imgsrv_command() -> list[str]:
    """The installed console script next to this Python, else the module."""
    script = Path(sys.executable).with_name("imgsrv")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "imgsrv.cli"]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without any IMGSRV_* setting, with state kept under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSRV_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["IMGSRV_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


def run_imgsrv(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*imgsrv_command(), *args],
        env=clean_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def no_imgsrv_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("IMGSRV_")]:
        monkeypatch.delenv(name)


# --------------------------------------------------------------------------- genkey


def test_genkey_prints_hex_key_and_salt_that_configure_signing(tmp_path: Path) -> None:
    result = run_imgsrv(tmp_path, "genkey")
    assert result.returncode == 0, result.stderr
    pairs = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert sorted(pairs) == ["IMGSRV_SIGNING_KEY", "IMGSRV_SIGNING_SALT"]
    assert len(bytes.fromhex(pairs["IMGSRV_SIGNING_KEY"])) == 32
    assert len(bytes.fromhex(pairs["IMGSRV_SIGNING_SALT"])) == 16
    assert load_settings(pairs).signed


def test_genkey_is_random_each_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["genkey"]) == 0
    assert cli.main(["genkey"]) == 0
    first, second = capsys.readouterr().out.splitlines()[::2]
    assert first != second


# --------------------------------------------------------------------------- config


def test_config_prints_valid_toml_with_secrets_masked(tmp_path: Path) -> None:
    secrets_env = {
        "IMGSRV_SIGNING_KEY": KEY,
        "IMGSRV_SIGNING_SALT": SALT,
        "IMGSRV_ADMIN_KEY": "admin-token-xyz",
        "IMGSRV_API_KEYS": "tenant-a:api-key-abc",
        "IMGSRV_JOB_CALLBACK_SECRET": "c0ffee",
        "IMGSRV_REDIS_URL": "redis://cache:s3cr3t-pw@redis.internal:6379/0",
        "IMGSRV_SOURCE_BASE_URL": "https://user:src-pw@assets.example/",
        "IMGSRV_PORT": "9099",
        "IMGSRV_PRESETS": "thumb=rs:cover:150:150/f:webp",
    }
    result = run_imgsrv(tmp_path, "config", **secrets_env)
    assert result.returncode == 0, result.stderr
    for secret in (KEY, SALT, "admin-token-xyz", "api-key-abc", "c0ffee", "s3cr3t-pw", "src-pw"):
        assert secret not in result.stdout
    printed = tomllib.loads(result.stdout)
    assert sorted(printed) == sorted(settings_fields())
    assert printed["signing_key"] == printed["signing_salt"] == cli.MASK
    assert printed["redis_url"] == f"redis://cache:{cli.MASK}@redis.internal:6379/0"
    assert printed["port"] == 9099
    assert printed["presets"] == {"thumb": "rs:cover:150:150/f:webp"}


def test_config_output_is_a_config_file_for_the_same_settings(tmp_path: Path) -> None:
    env = {"IMGSRV_WORKERS": "3", "IMGSRV_ALLOW_SVG": "0", "IMGSRV_CONNECT_TIMEOUT": "1.5"}
    result = run_imgsrv(tmp_path, "config", **env)
    printed = tmp_path / "printed.toml"
    printed.write_text(result.stdout)
    env["IMGSRV_DATA_DIR"] = str(tmp_path / "data")  # what run_imgsrv sets
    assert load_settings({"IMGSRV_CONFIG": str(printed)}) == load_settings(env)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("", ""),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@h:1/0", f"redis://:{cli.MASK}@h:1/0"),
        ("rediss://user:pw@h/0", f"rediss://user:{cli.MASK}@h/0"),
        ("unix:///run/r.sock?db=0&password=pw", f"unix:///run/r.sock?db=0&password={cli.MASK}"),
    ],
)
def test_mask_url_password(url: str, masked: str) -> None:
    assert cli.mask_url_password(url) == masked


def test_bad_configuration_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMGSRV_PORT", "eighty")
    assert cli.main(["config"]) == 2
    assert "configuration error" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["serve", "--port", "x"], ["serve", "--workers", "-1"], []])
def test_bad_arguments_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


# --------------------------------------------------------------------------- sign


def expected_signature(text: str, key: str = KEY, salt: str = SALT) -> str:
    """The documented algorithm, written out independently of imgsrv.urls."""
    digest = hmac.new(bytes.fromhex(key), bytes.fromhex(salt) + text.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def sign(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli.main(["sign", *args]) == 0
    return capsys.readouterr().out.strip()


@pytest.mark.usefixtures("no_imgsrv_env")
def test_sign_without_key_prints_an_unsigned_path_url(capsys: pytest.CaptureFixture[str]) -> None:
    url = sign(capsys, "local://sample.jpg", "rs:cover:300:200", "--ext", "webp")
    assert url == "http://127.0.0.1:8080/_/rs:cover:300:200/plain/local%3A%2F%2Fsample.jpg@webp"


@pytest.mark.usefixtures("no_imgsrv_env")
def test_sign_path_form_with_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMGSRV_SIGNING_KEY", KEY)
    monkeypatch.setenv("IMGSRV_SIGNING_SALT", SALT)
    url = sign(capsys, "https://img.example/a b.jpg", "w:300", "q:70", "--base", "https://cdn.x/")
    assert url.startswith("https://cdn.x/")
    path = urlsplit(url).path
    _, sig, rest = path.split("/", 2)
    assert rest.startswith("w:300/q:70/plain/")
    assert sig == expected_signature("/" + rest)


@pytest.mark.usefixtures("no_imgsrv_env")
def test_sign_query_form_with_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMGSRV_SIGNING_KEY", KEY)
    monkeypatch.setenv("IMGSRV_SIGNING_SALT", SALT)
    url = sign(capsys, "local://sample.jpg", "w:300", "h:200", "--ext", "webp", "--query")
    parts = urlsplit(url)
    assert parts.path == "/img"
    signed_query, _, sig = parts.query.rpartition("&sig=")
    assert sig == expected_signature("/img?" + signed_query)
    assert "w=300" in signed_query and "h=200" in signed_query and "f=webp" in signed_query


@pytest.mark.usefixtures("no_imgsrv_env")
@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["local://sample.jpg", "w:huge"], "'w'"),
        (["local://sample.jpg", "--ext", "bmp"], "bmp"),
        (["products/1.jpg", "w:10"], "base URL"),  # relative, but no source base URL
        (["ftp://host/a.jpg"], "scheme"),
    ],
)
def test_sign_refuses_urls_the_server_would_refuse(
    capsys: pytest.CaptureFixture[str], args: list[str], complaint: str
) -> None:
    assert cli.main(["sign", *args]) == 2
    assert complaint in capsys.readouterr().err


def test_sign_base_url_uses_loopback_for_wildcard_hosts() -> None:
    assert cli.server_base_url(load_settings({}, host="0.0.0.0", port=9)) == "http://127.0.0.1:9"
    assert cli.server_base_url(load_settings({}, host="::1", port=9)) == "http://[::1]:9"


# --------------------------------------------------------------------------- serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


class ServeProcess:
    """``imgsrv serve`` in a child process with its output in files."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [*imgsrv_command(), "serve", "--port", str(self.port), *args],
                env=clean_env(tmp_path),
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"imgsrv serve exited early:\n{self.log.read_text()}")
            try:
                return get_status(self.base + "/healthz")
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"imgsrv serve did not answer in {timeout} s:\n{self.log.read_text()}")

    def terminate(self, timeout: float = 40) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"imgsrv serve ignored SIGTERM:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[ServeProcess]]:
    pytest.importorskip("imgsrv.app")
    started: list[ServeProcess] = []

    class Tracked(ServeProcess):
        def __init__(self, tmp: Path, *args: str) -> None:
            super().__init__(tmp, *args)
            started.append(self)

    yield Tracked
    for process in started:
        process.stop()


def test_serve_one_worker_answers_healthz_and_stops_on_sigterm(
    serve: type[ServeProcess], tmp_path: Path
) -> None:
    server = serve(tmp_path, "--workers", "1")
    assert server.wait_healthy() == 200
    assert server.terminate() == 0
    output = server.log.read_text()
    assert "URL signing is OFF" in output
    assert "gunicorn" not in output  # one worker: plain uvicorn, no process manager


def test_serve_several_workers_runs_gunicorn_with_multiprocess_metrics(
    serve: type[ServeProcess], tmp_path: Path
) -> None:
    server = serve(tmp_path, "--workers", "2")
    assert server.wait_healthy() == 200
    assert get_status(server.base + "/metrics") == 200
    metrics_dir = tmp_path / "data" / f"prometheus-multiproc-{server.port}"
    assert metrics_dir.is_dir()
    assert server.terminate() == 0
    output = server.log.read_text()
    assert "URL signing is OFF" in output
    assert "imgsrv.serving.ImgsrvUvicornWorker" in output
    assert output.count("Booting worker") == 2
