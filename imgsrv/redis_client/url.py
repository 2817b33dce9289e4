"""``IMGSRV_REDIS_URL``: which Redis deployment imgsrv talks to, parsed once at start.

The scheme names the topology:

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) and
  ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``: one server (or a proxy in front of
  several);
* ``redis+sentinel://[[user]:password@]host1:port1,host2:port2/<master>[/<db>]`` (and
  ``rediss+sentinel://``): the master that Redis Sentinel names, followed after a failover;
* ``redis+cluster://[[user]:password@]host1:port1,host2:port2`` (and ``rediss+cluster://``):
  Redis Cluster, any few nodes of it; the client learns the rest.

Query options, for every scheme: ``password``, ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs`` (``required|optional|none``), ``ssl_check_hostname``
(``true|false``); ``db`` for ``redis://`` and ``unix://``; ``sentinel_password`` for Sentinel,
when the sentinels have a password of their own. Anything else is refused at start, with a
message naming the setting, instead of failing at the first connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from imgsrv.config import ConfigError

Topology = Literal["standalone", "sentinel", "cluster"]
SETTING = "IMGSRV_REDIS_URL"

SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
DEFAULT_PORTS: dict[Topology, int] = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}
TLS_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)
CERT_REQS = frozenset({"required", "optional", "none"})
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class RedisUrlError(ConfigError):
    """``IMGSRV_REDIS_URL`` cannot be used; the message names the setting."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{SETTING}: {reason}")


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS settings of ``rediss`` URLs (or any URL with ``ssl_*`` options)."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: str = "required"
    check_hostname: bool = True


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``IMGSRV_REDIS_URL``: the topology, where its nodes are, how to log in."""

    topology: Topology
    nodes: tuple[tuple[str, int], ...] = ()  # TCP addresses: one server, the sentinels, seeds
    path: str = ""  # unix socket of a standalone server
    master: str = ""  # the Sentinel service name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    tls: TlsOptions | None = None

    def describe(self) -> str:
        """Where the target is, without credentials, for logs and error messages."""
        where = self.path or ",".join(f"{host}:{port}" for host, port in self.nodes)
        if self.topology == "sentinel":
            return f"sentinel master {self.master!r} via {where}"
        if self.topology == "cluster":
            return f"cluster via {where}"
        return where


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``url`` (the ``redis_url`` setting); raises RedisUrlError naming what is wrong."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise RedisUrlError(
            f"unsupported scheme {scheme[:20]!r}: use redis://, rediss://, unix://, "
            "redis+sentinel://host:port,.../<master> or redis+cluster://host:port,..."
        )
    topology, tls_scheme = SCHEMES[scheme.lower()]
    parts = urlsplit(url)
    if parts.fragment:
        raise RedisUrlError("a fragment (#...) is not allowed")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    options = _query(parts.query)
    password = options.pop("password", None) or password
    sentinel_password = options.pop("sentinel_password", None)
    if sentinel_password is not None and topology != "sentinel":
        raise RedisUrlError("sentinel_password is an option of redis+sentinel:// URLs only")
    db_option = options.pop("db", None)
    tls = _tls(options, tls_scheme)
    if options:
        raise RedisUrlError(f"unknown option(s): {', '.join(sorted(options))}")
    base = RedisTarget(topology, username=username, password=password, tls=tls)
    if scheme.lower() == "unix":
        if hosts:
            raise RedisUrlError("unix:// takes a socket path: unix:///path/to/redis.sock")
        if not parts.path or parts.path == "/":
            raise RedisUrlError("unix:// needs the socket's path: unix:///path/to/redis.sock")
        if tls is not None:
            raise RedisUrlError("TLS options do not apply to unix sockets")
        return replace(base, path=unquote(parts.path), db=_db(db_option))
    nodes = _nodes(hosts, DEFAULT_PORTS[topology], several=topology != "standalone")
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if topology == "standalone":
        if len(segments) > 1 or (segments and db_option is not None):
            raise RedisUrlError("the path of a redis:// URL is the database number: /0")
        return replace(base, nodes=nodes, db=_db(db_option or _first(segments)))
    if db_option is not None:
        raise RedisUrlError(f"put the database in the path of a {scheme}:// URL, not in ?db=")
    if topology == "sentinel":
        if not segments or len(segments) > 2:
            raise RedisUrlError(
                "redis+sentinel:// needs the master's name: "
                "redis+sentinel://host1:26379,host2:26379/<master>[/<db>]"
            )
        db = _db(segments[1] if len(segments) == 2 else None)
        return replace(
            base, nodes=nodes, master=segments[0], db=db, sentinel_password=sentinel_password
        )
    if segments and segments != ["0"]:
        raise RedisUrlError("Redis Cluster has only database 0: no path after the nodes")
    return replace(base, nodes=nodes)


def _first(segments: list[str]) -> str | None:
    return segments[0] if segments else None


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, has_password, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if has_password else None)


def _query(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise RedisUrlError("malformed query string") from None
    options: dict[str, str] = {}
    for name, value in pairs:
        if name in options:
            raise RedisUrlError(f"option {name} is given twice")
        options[name] = value
    return options


def _db(text: str | None) -> int:
    if text is None or text == "":
        return 0
    if not text.isdigit():
        raise RedisUrlError(f"database {text[:20]!r} is not a number")
    return int(text)


def _nodes(hosts: str, default_port: int, several: bool) -> tuple[tuple[str, int], ...]:
    if not hosts:
        raise RedisUrlError("no host: e.g. redis://redis.internal:6379/0")
    items = hosts.split(",")
    if len(items) > 1 and not several:
        raise RedisUrlError(
            "several hosts need redis+sentinel:// (Sentinel) or redis+cluster:// (Cluster)"
        )
    return tuple(_address(item, default_port) for item in items)


def _address(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise RedisUrlError(f"malformed address {text[:60]!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise RedisUrlError(f"an address without a host: {text[:60]!r}")
    if not port_text:
        return unquote(host), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RedisUrlError(f"bad port in {text[:60]!r}")
    return unquote(host), int(port_text)


def _tls(options: dict[str, str], tls_scheme: bool) -> TlsOptions | None:
    given = {name: options.pop(name) for name in TLS_OPTIONS & options.keys()}
    if not given and not tls_scheme:
        return None
    if not tls_scheme:
        raise RedisUrlError("ssl_* options need a TLS scheme: rediss://, rediss+sentinel://...")
    cert_reqs = given.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in CERT_REQS:
        raise RedisUrlError("ssl_cert_reqs must be required, optional or none")
    check = given.get("ssl_check_hostname", "true").lower()
    if check not in TRUE_WORDS | FALSE_WORDS:
        raise RedisUrlError("ssl_check_hostname must be true or false")
    return TlsOptions(
        ca_certs=given.get("ssl_ca_certs") or None,
        certfile=given.get("ssl_certfile") or None,
        keyfile=given.get("ssl_keyfile") or None,
        cert_reqs=cert_reqs,
        check_hostname=check in TRUE_WORDS and cert_reqs != "none",
    )
