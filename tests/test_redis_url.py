"""IMGSRV_REDIS_URL: every topology's URL form, its options, and clear errors for bad ones."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from imgsrv.config import ConfigError
from imgsrv.redis_client import RedisTarget, RedisUrlError, open_redis, parse_redis_url
from imgsrv.redis_client.url import TlsOptions


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://cache:6380/2", RedisTarget("standalone", (("cache", 6380),), db=2)),
        ("redis://cache", RedisTarget("standalone", (("cache", 6379),))),
        (
            "redis://:s3cret@cache:6379/0",
            RedisTarget("standalone", (("cache", 6379),), password="s3cret"),
        ),
        (
            "redis://app:s%40cret@cache/1",
            RedisTarget("standalone", (("cache", 6379),), db=1, username="app", password="s@cret"),
        ),
        (
            "redis://cache?password=pw&db=3",
            RedisTarget("standalone", (("cache", 6379),), db=3, password="pw"),
        ),
        (
            "redis://[::1]:7000/0",
            RedisTarget("standalone", (("::1", 7000),)),
        ),
        (
            "unix:///run/redis/redis.sock?db=4",
            RedisTarget("standalone", path="/run/redis/redis.sock", db=4),
        ),
        (
            "unix://:pw@/run/redis.sock",
            RedisTarget("standalone", path="/run/redis.sock", password="pw"),
        ),
        (
            "redis+sentinel://s1:26380,s2,s3:26381/mymaster",
            RedisTarget(
                "sentinel", (("s1", 26380), ("s2", 26379), ("s3", 26381)), master="mymaster"
            ),
        ),
        (
            "redis+sentinel://:pw@s1:26379/mymaster/5?sentinel_password=spw",
            RedisTarget(
                "sentinel",
                (("s1", 26379),),
                master="mymaster",
                db=5,
                password="pw",
                sentinel_password="spw",
            ),
        ),
        (
            "redis+cluster://:pw@n1:7000,n2:7001",
            RedisTarget("cluster", (("n1", 7000), ("n2", 7001)), password="pw"),
        ),
        ("redis+cluster://n1/0", RedisTarget("cluster", (("n1", 6379),))),
    ],
)
def test_urls_of_every_topology_parse(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == expected


def test_tls_schemes_and_options() -> None:
    plain = parse_redis_url("rediss://cache:6380/0")
    assert plain.tls == TlsOptions()
    custom = parse_redis_url(
        "rediss+cluster://n1:7000?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=none"
        "&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
    )
    assert custom.topology == "cluster"
    assert custom.tls == TlsOptions(
        ca_certs="/etc/ca.pem",
        certfile="/c.pem",
        keyfile="/k.pem",
        cert_reqs="none",
        check_hostname=False,
    )
    sentinel = parse_redis_url("rediss+sentinel://s1/m?ssl_check_hostname=false")
    assert sentinel.tls == TlsOptions(check_hostname=False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache:6379", "unsupported scheme 'http'"),
        ("cache:6379", "unsupported scheme"),
        ("redis://", "no host"),
        ("redis://a:1,b:2", "several hosts need redis+sentinel://"),
        ("redis://cache:99999", "bad port"),
        ("redis://cache:port", "bad port"),
        ("redis://cache/zero", "database 'zero' is not a number"),
        ("redis://cache/0/1", "the path of a redis:// URL is the database number"),
        ("redis://cache?timeout=1", "unknown option(s): timeout"),
        ("redis://cache?ssl_ca_certs=/ca.pem", "ssl_* options need a TLS scheme"),
        ("rediss://cache?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
        ("redis://cache?db=1&db=2", "option db is given twice"),
        ("unix://", "needs the socket's path"),
        ("unix://host/sock", "unix:// takes a socket path"),
        ("redis+sentinel://s1:26379", "needs the master's name"),
        ("redis+sentinel://s1:26379/m/0/extra", "needs the master's name"),
        ("redis+sentinel://s1/m?db=1", "put the database in the path"),
        ("redis+cluster://n1:7000/3", "Redis Cluster has only database 0"),
        ("redis+cluster://n1:7000,:7001", "an address without a host"),
        ("redis://cache?sentinel_password=x", "sentinel_password is an option of"),
        ("redis://cache#frag", "a fragment"),
    ],
)
def test_bad_urls_are_refused_naming_the_setting(url: str, message: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        parse_redis_url(url)
    text = str(caught.value)
    assert text.startswith("IMGSRV_REDIS_URL: ") and message in text
    assert isinstance(caught.value, ConfigError)  # the CLI's exit status 2, one line
    assert "\n" not in text


def test_errors_never_show_the_password() -> None:
    with pytest.raises(RedisUrlError) as caught:
        parse_redis_url("redis://:hunter2@cache:port")
    assert "hunter2" not in str(caught.value)
    target = parse_redis_url("redis+sentinel://:hunter2@s1/m?sentinel_password=hunter3")
    assert "hunter" not in repr(target) and "hunter" not in target.describe()


async def test_each_topology_gets_its_client_class() -> None:
    standalone = open_redis(parse_redis_url("redis://127.0.0.1:1/0"), 0.1, 0.1)
    sentinel = open_redis(parse_redis_url("redis+sentinel://127.0.0.1:1/m/2"), 0.1, 0.1)
    cluster = open_redis(parse_redis_url("redis+cluster://127.0.0.1:1"), 0.1, 0.1)
    try:
        assert isinstance(standalone, Redis) and not isinstance(standalone, RedisCluster)
        assert isinstance(sentinel, Redis)
        assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
        assert sentinel.connection_pool.service_name == "m"
        assert sentinel.connection_pool.connection_kwargs["db"] == 2
        assert isinstance(cluster, RedisCluster)
    finally:
        await standalone.aclose()
        await sentinel.aclose()
        await cluster.aclose()
