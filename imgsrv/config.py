"""One frozen Settings object, built once at start.

Sources, later ones winning: the defaults below (documented one by one in
``config/default.toml``), the TOML file named by ``IMGSRV_CONFIG`` (if any), then one
``IMGSRV_<NAME>`` environment variable per setting. No other module reads the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "IMGSRV_"
AUTO_FORMATS = ("avif", "webp")  # the formats f:auto may choose when a client accepts them
SAMPLES_DIR = Path(__file__).parent / "samples"


class ConfigError(ValueError):
    """A setting has a value of the wrong type or out of range."""


@dataclass(frozen=True, slots=True)
class Settings:
    # --- server
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 0  # 0 = one per CPU the container may use (cgroup quota aware)
    log_level: str = "info"
    access_log: bool = True
    data_dir: str = "imgsrv-data"
    drain_delay: float = 0.0  # seconds /readyz answers 503 after SIGTERM before the listener closes

    # --- URL signing (hex strings; empty key = unsigned dev mode)
    signing_key: str = ""
    signing_salt: str = ""

    # --- sources
    source_base_url: str = ""
    local_root: str = ""  # empty = the sample images shipped with imgsrv
    allowed_source_hosts: tuple[str, ...] = ()
    allow_source_networks: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    max_source_bytes: int = 32 * 1024 * 1024
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    download_timeout: float = 20.0
    max_redirects: int = 5
    user_agent: str = "imgsrv/0.1"

    # --- image limits
    max_source_megapixels: float = 50.0
    max_animation_frames: int = 100
    max_output_dimension: int = 8192
    allow_svg: bool = True

    # --- output
    jpeg_quality: int = 80
    webp_quality: int = 80
    webp_effort: int = 4
    avif_quality: int = 60
    avif_effort: int = 2
    png_compression: int = 6
    auto_formats: tuple[str, ...] = ("avif", "webp")  # what f:auto may pick beyond JPEG/PNG/GIF
    jpeg_shrink_headroom: bool = False
    presets: Mapping[str, str] = field(default_factory=dict)

    # --- HTTP caching headers
    cache_control: str = "public, max-age=31536000, immutable"
    cache_control_unsigned: str = "public, max-age=3600"
    error_cache_control: str = "no-store"

    # --- concurrency
    transform_threads: int = 0  # 0 = number of CPUs
    max_queue: int = 0  # transforms waiting for a thread before 503; 0 = 32 per thread
    max_queue_wait: float = 10.0  # 503 when a new transform would wait longer (seconds)
    retry_after: int = 1
    refusal_delay: float = 1.0  # seconds a 503 refusal is held before it is sent
    vips_concurrency: int = 1
    transform_nice: int = 5  # transform threads this much nicer than the event loop
    malloc_arena_max: int = 2  # glibc malloc arenas per process; 0 = glibc's default
    trim_interval: float = 2.0  # seconds; return freed memory to the OS once the pool idles

    # --- cache
    l1_max_bytes: int = 0  # 0 = half the container memory / worker processes
    l1_ttl: float = 300.0  # seconds, capped at 300
    source_cache_bytes: int = 16 * 1024 * 1024
    source_cache_ttl: float = 30.0
    render_lock_ttl: float = 30.0
    render_lock_wait: float = 10.0
    admin_key: str = ""

    # --- Redis (empty = embedded redis-server when available)
    redis_url: str = ""
    redis_prefix: str = "imgsrv"
    redis_timeout: float = 0.25
    redis_breaker_failures: int = 3
    redis_breaker_reset: float = 2.0
    embedded_redis: bool = True
    embedded_redis_maxmemory: str = "256mb"

    # --- jobs
    api_keys: tuple[str, ...] = ()  # "tenant:key" entries
    job_workers: int = 1  # jobs one server process runs at once; 0 = no in-process worker
    job_max_attempts: int = 3
    job_backoff: float = 2.0  # seconds before the first retry; doubles with every attempt
    job_lease: float = 30.0
    job_heartbeat: float = 10.0
    job_poll_interval: float = 0.5
    job_priority_weights: str = "8:4:1"  # high:normal:low
    job_max_variants: int = 50
    job_retention_days: float = 7.0
    job_callback_secret: str = ""  # hex; empty = each tenant's API key
    job_callback_timeout: float = 10.0
    job_callback_attempts: int = 5
    job_accept_replicas: int = 1  # replicas that must confirm a submission (WAIT); 0 = none
    job_accept_timeout: float = 0.5  # seconds a submission waits for them, then 503
    job_merge_window: float = 0.05  # seconds a claimed job waits for others of its source
    job_max_schedules: int = 100  # cron schedules per tenant
    worker_heartbeat: float = 5.0  # registry heartbeat; offline after 3 missed
    dashboard_refresh: float = 5.0  # seconds between the dashboard's own updates
    worker_metrics_port: int = 0  # `imgsrv worker` serves /metrics here; 0 = not at all

    # --- egress budget (image bytes served per month, counted in Redis)
    egress_monthly_budget: str = ""  # e.g. "500GB"; empty = no budget
    egress_saver_at: float = 0.6  # share of the budget at which saver mode starts
    egress_saver_quality_step: int = 15  # default qualities this much lower in saver mode
    egress_saver_auto_formats: tuple[str, ...] = ("avif", "webp")  # f:auto in saver mode

    @property
    def signing_key_bytes(self) -> bytes:
        return bytes.fromhex(self.signing_key)

    @property
    def signing_salt_bytes(self) -> bytes:
        return bytes.fromhex(self.signing_salt)

    @property
    def signed(self) -> bool:
        return bool(self.signing_key)

    @property
    def local_root_path(self) -> Path:
        return Path(self.local_root) if self.local_root else SAMPLES_DIR

    @property
    def allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.allow_source_networks)

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)

    @property
    def cpu_count(self) -> int:
        return available_cpus()

    @property
    def thread_count(self) -> int:
        return self.transform_threads or self.cpu_count

    @property
    def queue_limit(self) -> int:
        return self.max_queue or 32 * self.thread_count

    @property
    def worker_count(self) -> int:
        return self.workers or self.cpu_count

    @property
    def egress_budget_bytes(self) -> int:
        """The monthly egress budget in bytes; 0 = no budget."""
        return parse_size(self.egress_monthly_budget)

    @property
    def l1_bytes(self) -> int:
        """L1 capacity of one process: half the container memory shared by all workers."""
        if self.l1_max_bytes:
            return self.l1_max_bytes
        return available_memory() // 2 // self.worker_count


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes of ``500GB``, ``1.5TB``, ``200 MiB`` or ``4096``; an empty text is 0.

    KB/MB/GB/TB are powers of 1000, as bandwidth is billed; KiB/MiB/GiB/TiB powers of 1024.
    """
    if not text.strip():
        return 0
    match = _SIZE_RE.match(text.lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size such as 500GB, 1.5TB or 200MiB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def available_cpus() -> int:
    """CPUs this process may use: cgroup v2/v1 quota, then affinity, then os.cpu_count()."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(quota + 0.999)))
    return count


def available_memory(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes of memory this container may use: cgroup v2/v1 limit, else physical RAM."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (cgroup_root / name).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            # cgroup v1 reports "no limit" as a huge number; the physical size is the cap.
            return min(int(text), physical)
    return physical


def _cgroup_cpu_quota() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, ``IMGSRV_CONFIG`` TOML, ``IMGSRV_*`` env and overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        values.update(_read_toml(Path(config_file)))
    hints = get_type_hints(Settings)
    for name in hints:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    values.update(overrides)
    converted = {name: _convert(name, hints[name], value) for name, value in values.items()}
    settings = Settings(**converted)
    _check(settings)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        # Sections only group settings for reading; [presets] is the one real table.
        if isinstance(value, dict) and key != "presets":
            flat.update(value)
        else:
            flat[key] = value
    unknown = set(flat) - set(get_type_hints(Settings))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(sorted(unknown))}")
    return flat


def _convert(name: str, hint: Any, value: Any) -> Any:
    origin = getattr(hint, "__origin__", hint)
    try:
        if hint is bool:
            return _to_bool(value)
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                return tuple(p.strip() for p in value.split(",") if p.strip())
            return tuple(str(v) for v in value)
        if origin is Mapping:
            if isinstance(value, str):
                # "name=w:100/h:100;other=w:50" (';' because options contain ',' and ':')
                pairs = (p.split("=", 1) for p in value.split(";") if p.strip())
                return {k.strip(): v.strip() for k, v in pairs}
            return {str(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: {value!r} is not a valid {hint}") from exc
    raise ConfigError(f"setting {name}: unsupported type {hint}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def _check(s: Settings) -> None:
    try:
        s.signing_key_bytes  # noqa: B018
        s.signing_salt_bytes  # noqa: B018
    except ValueError:
        raise ConfigError("signing_key and signing_salt must be hex strings") from None
    try:
        s.allowed_networks  # noqa: B018
    except ValueError as exc:
        raise ConfigError(f"allow_source_networks: {exc}") from None
    try:
        s.trusted_proxy_networks  # noqa: B018
    except ValueError as exc:
        raise ConfigError(f"trusted_proxies: {exc}") from None
    if not 0 <= s.webp_effort <= 6:
        raise ConfigError("webp_effort must be within 0..6")
    for name in ("jpeg_quality", "webp_quality", "avif_quality"):
        if not 1 <= getattr(s, name) <= 100:
            raise ConfigError(f"{name} must be within 1..100")
    if s.max_source_bytes <= 0 or s.max_source_megapixels <= 0:
        raise ConfigError("max_source_bytes and max_source_megapixels must be positive")
    if s.drain_delay < 0:
        raise ConfigError("drain_delay must not be negative")
    if s.job_accept_replicas < 0 or not 0 < s.job_accept_timeout <= 60:
        raise ConfigError(
            "job_accept_replicas must not be negative and job_accept_timeout must be "
            "within (0, 60] seconds"
        )
    for name in ("auto_formats", "egress_saver_auto_formats"):
        unknown = set(getattr(s, name)) - set(AUTO_FORMATS)
        if unknown:
            raise ConfigError(f"{name} may name {' and '.join(AUTO_FORMATS)}, not {unknown}")
    try:
        s.egress_budget_bytes  # noqa: B018
    except ValueError as exc:
        raise ConfigError(f"egress_monthly_budget: {exc}") from None
    if not 0 < s.egress_saver_at <= 1:
        raise ConfigError("egress_saver_at must be a fraction of the budget within (0, 1]")
    if not 0 <= s.egress_saver_quality_step < 100:
        raise ConfigError("egress_saver_quality_step must be within 0..99")
    if not 0 <= s.worker_metrics_port < 65536:
        raise ConfigError("worker_metrics_port must be a TCP port, or 0 for none")


def settings_fields() -> tuple[str, ...]:
    """Names of every setting, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(Settings))
