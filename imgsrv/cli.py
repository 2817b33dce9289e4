"""The ``imgsrv`` command: ``serve``, ``worker``, ``report``, ``sign``, ``genkey`` and ``config``.

Settings come from :func:`imgsrv.config.load_settings` (defaults, ``IMGSRV_CONFIG``, ``IMGSRV_*``
environment); command-line flags of ``serve`` override them and are handed to the worker
processes through the same ``IMGSRV_*`` variables, because every worker rebuilds its Settings
from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from imgsrv import serving, urls
from imgsrv.config import ENV_PREFIX, ConfigError, Settings, load_settings, settings_fields
from imgsrv.errors import ImgsrvError
from imgsrv.logs import configure_logging
from imgsrv.redis_client import check_redis, open_blocking_redis

if TYPE_CHECKING:
    from imgsrv.report.period import Period
    from imgsrv.report.review import Review

log = logging.getLogger("imgsrv.cli")

SECRET_SETTINGS = ("signing_key", "signing_salt", "admin_key", "api_keys", "job_callback_secret")
URL_SETTINGS = ("redis_url", "source_base_url")
MASK = "********"
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


Command = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``imgsrv`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args.command
    try:
        return command(args)
    except ConfigError as exc:
        print(f"imgsrv: configuration error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="imgsrv",
        description="Image transform HTTP server. Settings: config/default.toml, IMGSRV_* env.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="address to listen on (IMGSRV_HOST)")
    serve.add_argument("--port", type=int, help="TCP port (IMGSRV_PORT)")
    serve.add_argument(
        "--workers",
        type=_non_negative_int,
        help="worker processes; 0 = one per usable CPU (IMGSRV_WORKERS)",
    )
    serve.set_defaults(command=serve_command)

    sign = commands.add_parser("sign", help="print a signed image URL")
    sign.add_argument("source", help="source URL, relative path or local://name")
    sign.add_argument("options", nargs="*", metavar="OPTION", help="e.g. rs:cover:300:200 q:75")
    sign.add_argument("--ext", help="output format as source extension, e.g. webp")
    sign.add_argument("--base", help="scheme://host[:port] to prefix (default: this server)")
    sign.add_argument("--query", action="store_true", help="query form /img?url=...&sig=...")
    sign.set_defaults(command=sign_command)

    genkey = commands.add_parser("genkey", help="print a new random signing key and salt")
    genkey.set_defaults(command=genkey_command)

    config = commands.add_parser("config", help="print the effective settings, secrets masked")
    config.set_defaults(command=config_command)

    worker = commands.add_parser("worker", help="run jobs from the queue, without HTTP")
    worker.add_argument(
        "--concurrency",
        type=_non_negative_int,
        help="jobs run at once; default: two per transform thread",
    )
    worker.add_argument(
        "--nice",
        type=_non_negative_int,
        default=10,
        help="lower the worker's CPU priority by this much (default 10), so that image "
        "requests served on the same machine keep their latency; 0 = unchanged",
    )
    worker.add_argument(
        "--metrics-port",
        type=_non_negative_int,
        help="serve Prometheus metrics on this port at /metrics (IMGSRV_WORKER_METRICS_PORT)",
    )
    worker.set_defaults(command=worker_command)

    report = commands.add_parser(
        "report", help="print a month's review (requests, caches, jobs, egress) in Markdown"
    )
    report.add_argument("--month", help="YYYY-MM (default: this month, so far)")
    report.add_argument("--from", dest="first", metavar="DAY", help="first day, YYYY-MM-DD")
    report.add_argument("--to", dest="last", metavar="DAY", help="last day (default: today)")
    report.add_argument(
        "--prometheus", metavar="URL", help="read Prometheus at URL (default: the Redis counters)"
    )
    report.add_argument(
        "--selector", default="", help='Prometheus label matchers, e.g. namespace="imgsrv"'
    )
    report.add_argument(
        "--chart",
        metavar="PNG",
        help="where to write the chart (default: imgsrv-report-PERIOD.png)",
    )
    report.set_defaults(command=report_command)
    return parser


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


# --------------------------------------------------------------------------- serve


def serve_command(args: argparse.Namespace) -> int:
    """Run the server: one uvicorn process for 1 worker, gunicorn for more."""
    overrides = {
        name: value
        for name in ("host", "port", "workers")
        if (value := getattr(args, name)) is not None
    }
    settings = load_settings(**overrides)
    configure_logging(settings.log_level)
    check_redis_at_start(settings)
    # Workers rebuild Settings from the environment: hand the flags over that way.
    os.environ.update({ENV_PREFIX + name.upper(): str(value) for name, value in overrides.items()})

    workers = settings.worker_count
    if workers == 1:
        if not settings.signed:
            log.warning(serving.UNSIGNED_WARNING)
        # One process: the embedded redis-server (if any) lives exactly as long as this call.
        embedded = serving.start_embedded_redis(settings, os.environ)
        try:
            os.environ.update(serving.worker_environment(settings, workers))
            serving.run_uvicorn(settings)
        finally:
            if embedded is not None:
                embedded.stop()
        return 0
    # gunicorn replaces this process; its on_starting/on_exit hooks own the embedded Redis.
    serving.exec_gunicorn()


# --------------------------------------------------------------------------- worker


def worker_command(args: argparse.Namespace) -> int:
    """Run a dedicated job worker until SIGTERM/SIGINT; it stops gracefully."""
    # Imported here: the worker loads libvips, which `serve` must not do before gunicorn forks.
    from imgsrv.jobs.worker import run_worker, worker_settings
    from imgsrv.metrics import serve_metrics

    overrides = {} if args.metrics_port is None else {"worker_metrics_port": args.metrics_port}
    settings = worker_settings(load_settings(**overrides))
    configure_logging(settings.log_level)
    check_redis_at_start(settings)
    if settings.worker_metrics_port:
        serve_metrics(settings.host, settings.worker_metrics_port)
    # Before any thread exists, so that the libvips threads inherit the lower priority.
    os.nice(min(args.nice, 19))
    # Two jobs per thread: while one waits for its download or Redis, the other transforms.
    concurrency = args.concurrency or 2 * settings.thread_count
    asyncio.run(run_worker(settings, concurrency))
    return 0


def check_redis_at_start(settings: Settings) -> None:
    """A configured Redis must answer now: a wrong URL stops the start with one line naming
    IMGSRV_REDIS_URL (a ConfigError, exit status 2) instead of a server whose cache and job
    queue never work. A Redis that goes away later is the circuit breaker's business."""
    found = check_redis(settings)
    if found is not None:
        log.info("redis reachable", extra={"redis": found})


# --------------------------------------------------------------------------- report


def report_command(args: argparse.Namespace) -> int:
    """Print the review of a period as Markdown and write its chart next to it."""
    # Imported here: the chart loads libvips.
    from imgsrv.report.chart import draw_chart
    from imgsrv.report.review import to_markdown

    settings = load_settings()
    try:
        period = report_period(args.month, args.first, args.last)
        review = collect_review(args, period, settings)
    except (ValueError, RuntimeError, ConnectionError, OSError) as exc:
        print(f"imgsrv report: {exc}", file=sys.stderr)
        return 2
    chart = Path(args.chart or f"imgsrv-report-{period.title.replace(' ', '_')}.png")
    draw_chart(review, chart)
    print(to_markdown(review, chart.name))
    return 0


def report_period(month: str | None, first: str | None, last: str | None) -> Period:
    """The period of ``--month`` or ``--from``/``--to`` (default: this month)."""
    from imgsrv.report.period import month_period, range_period

    today = datetime.datetime.now(datetime.UTC).date()
    if month and (first or last):
        raise ValueError("give either --month or --from/--to")
    if first or last:
        return range_period(first or today.replace(day=1).isoformat(), last or today.isoformat())
    return month_period(month or today.strftime("%Y-%m"))


def collect_review(args: argparse.Namespace, period: Period, settings: Settings) -> Review:
    """The review from Prometheus when a URL is given, else from the Redis counters."""
    from imgsrv.embedded_redis import running_embedded_url
    from imgsrv.report.from_prometheus import review_from_prometheus
    from imgsrv.report.from_redis import review_from_redis

    if args.prometheus:
        return review_from_prometheus(args.prometheus, period, args.selector)
    url = settings.redis_url or running_embedded_url(settings.data_dir)
    if not url:
        raise ValueError(
            "no Redis to read the counters from: set IMGSRV_REDIS_URL, run this in the folder "
            "of a running `imgsrv serve`, or give --prometheus URL"
        )
    budget = settings.egress_budget_bytes
    saver_at = int(budget * settings.egress_saver_at)
    client = open_blocking_redis(url, timeout=5.0)
    try:
        return review_from_redis(client, settings.redis_prefix, period, budget, saver_at)
    finally:
        client.close()


# --------------------------------------------------------------------------- sign


def sign_command(args: argparse.Namespace) -> int:
    """Print a full URL for ``source`` + options, signed when a key is configured."""
    settings = load_settings()
    try:
        url = signed_url(args.source, args.options, args.ext, args.query, settings)
    except ImgsrvError as exc:
        print(f"imgsrv sign: {exc}", file=sys.stderr)
        return 2
    if not settings.signed:
        print("imgsrv sign: no signing key configured; the URL is unsigned", file=sys.stderr)
    print((args.base or server_base_url(settings)).rstrip("/") + url)
    return 0


def signed_url(
    source: str, options: Sequence[str], ext: str | None, query_form: bool, settings: Settings
) -> str:
    """The signed path (or ``/img?`` query) URL, checked by parsing it as the server will.

    Raises the server's own error (bad option, bad or forbidden source) for a URL it would
    refuse, so a typo is caught here instead of in production.
    """
    if query_form:
        url = urls.sign_query(urls.build_query(source, options, ext), settings)
        urls.parse_query(url.partition("?")[2].encode(), settings)
    else:
        url = urls.sign_path(urls.build_path(source, options, ext), settings)
        urls.parse_path(url.encode(), settings)
    return url


def server_base_url(settings: Settings) -> str:
    """``http://host:port`` of this server as a client on the same machine reaches it."""
    host = "127.0.0.1" if settings.host in WILDCARD_HOSTS else settings.host
    return "http://" + serving.bind_address(host, settings.port)


# --------------------------------------------------------------------------- genkey


def genkey_command(args: argparse.Namespace) -> int:
    """Print a fresh random key (32 bytes) and salt (16 bytes) as environment assignments."""
    print(f"{ENV_PREFIX}SIGNING_KEY={secrets.token_hex(32)}")
    print(f"{ENV_PREFIX}SIGNING_SALT={secrets.token_hex(16)}")
    return 0


# --------------------------------------------------------------------------- config


def config_command(args: argparse.Namespace) -> int:
    """Print the effective settings as TOML, with secrets masked."""
    print(settings_toml(masked_settings(load_settings())), end="")
    return 0


def masked_settings(settings: Settings) -> dict[str, Any]:
    """Every setting by name, with keys, salts and URL passwords replaced by a mask."""
    values = {name: getattr(settings, name) for name in settings_fields()}
    for name in SECRET_SETTINGS:
        if values[name]:
            values[name] = MASK
    for name in URL_SETTINGS:
        values[name] = mask_url_password(values[name])
    return values


def mask_url_password(url: str) -> str:
    """``redis://user:secret@host/0?password=x`` -> the same with both passwords masked."""
    netloc = urlsplit(url).netloc
    user, has_password, _ = netloc.rpartition("@")[0].partition(":")
    if has_password:
        host = netloc.rpartition("@")[2]
        url = url.replace(netloc, f"{user}:{MASK}@{host}", 1)
    return re.sub(r"([?&]password=)[^&#]*", rf"\g<1>{MASK}", url)


def settings_toml(values: Mapping[str, Any]) -> str:
    """TOML text of flat settings; mappings (presets) become tables after the plain keys.

    The output is a valid IMGSRV_CONFIG file (once masked secrets are filled in again).
    """
    lines = [
        "# Effective imgsrv settings: defaults < IMGSRV_CONFIG file < IMGSRV_* env.",
        "# Secrets are masked.",
    ]
    tables: list[str] = []
    for name, value in values.items():
        if isinstance(value, Mapping):
            tables += ["", f"[{name}]"]
            tables += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string literal is a valid TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


if __name__ == "__main__":
    raise SystemExit(main())
