"""Settings: the documented defaults file, environment overrides, config files, bad values."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from imgsrv.config import ConfigError, Settings, load_settings, settings_fields

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOML = REPO / "config" / "default.toml"
PRODUCTION_TOML = REPO / "config" / "production.example.toml"
DEFAULTS = Settings()
HINTS = get_type_hints(Settings)


def read_sections(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def flatten(sections: Mapping[str, Any]) -> dict[str, Any]:
    """The loader's rule: sections only group settings, except the [presets] table."""
    flat: dict[str, Any] = {}
    for key, value in sections.items():
        if isinstance(value, dict) and key != "presets":
            for name, setting in value.items():
                assert name not in flat, f"{name} is listed twice"
                flat[name] = setting
        else:
            flat[key] = value
    return flat


# --------------------------------------------------------------------------- default.toml


def test_default_toml_lists_every_setting_and_nothing_else() -> None:
    documented = flatten(read_sections(DEFAULT_TOML))
    assert sorted(documented) == sorted(settings_fields())


@pytest.mark.parametrize("name", settings_fields())
def test_default_toml_value_equals_the_dataclass_default(name: str) -> None:
    raw = flatten(read_sections(DEFAULT_TOML))[name]
    default = getattr(DEFAULTS, name)
    if isinstance(default, tuple):
        assert tuple(raw) == default
    elif isinstance(default, Mapping):
        assert dict(raw) == dict(default)
    else:
        # Same type too: 3 where the setting is 3.0 would be a different document.
        assert type(raw) is type(default)
        assert raw == default


@pytest.mark.parametrize("name", settings_fields())
def test_default_toml_documents_each_setting_with_its_env_var(name: str) -> None:
    env_name = "IMGSRV_" + name.upper()
    comment = comment_above(DEFAULT_TOML.read_text(), name)
    assert env_name in comment, f"the comment above {name} does not name {env_name}"


def comment_above(text: str, name: str) -> str:
    """The comment lines right above the line that sets ``name`` (or opens table ``[name]``)."""
    lines = text.splitlines()
    index = next(
        i
        for i, line in enumerate(lines)
        if line.split("=")[0].strip() == name or line.strip() == f"[{name}]"
    )
    block: list[str] = []
    for line in reversed(lines[:index]):
        if not line.startswith("#"):
            break
        block.append(line)
    return "\n".join(reversed(block))


def test_default_toml_loaded_as_config_file_gives_the_defaults() -> None:
    assert load_settings({"IMGSRV_CONFIG": str(DEFAULT_TOML)}) == DEFAULTS


def test_production_example_loads_and_signs_with_secrets_from_env() -> None:
    settings = load_settings(
        {
            "IMGSRV_CONFIG": str(PRODUCTION_TOML),
            "IMGSRV_SIGNING_KEY": "ab" * 32,
            "IMGSRV_SIGNING_SALT": "cd" * 16,
        }
    )
    assert settings.signed
    assert settings.host == "0.0.0.0"
    assert settings.redis_url.startswith("redis://")
    assert settings.allowed_source_hosts
    assert "thumb" in settings.presets


def test_production_example_documents_the_redis_eviction_policy() -> None:
    assert "maxmemory-policy allkeys-lfu" in PRODUCTION_TOML.read_text()


# --------------------------------------------------------------------------- environment


def non_default_env_value(name: str) -> tuple[str, Any]:
    """An env text for ``name`` and the value it must produce, different from the default."""
    special: dict[str, tuple[str, Any]] = {
        "signing_key": ("00ff", "00ff"),
        "signing_salt": ("a1b2", "a1b2"),
        "allow_source_networks": ("10.0.0.0/8, 192.168.0.0/16", ("10.0.0.0/8", "192.168.0.0/16")),
        "log_level": ("debug", "debug"),
        "host": ("0.0.0.0", "0.0.0.0"),
        "local_root": (str(REPO), str(REPO)),
        "redis_url": ("redis://127.0.0.1:6390/1", "redis://127.0.0.1:6390/1"),
        "source_base_url": ("https://img.example/", "https://img.example/"),
        "auto_formats": ("webp", ("webp",)),
        "egress_saver_auto_formats": ("webp", ("webp",)),
        "egress_monthly_budget": ("500GB", "500GB"),
        "egress_saver_at": ("0.5", 0.5),
    }
    if name in special:
        return special[name]
    hint = HINTS[name]
    default = getattr(DEFAULTS, name)
    if hint is bool:
        return ("false" if default else "true"), not default
    if hint is int:
        return str(default + 1), default + 1
    if hint is float:
        return str(default + 1.5), default + 1.5
    if hint is str:
        return "other-value", "other-value"
    if getattr(hint, "__origin__", None) is tuple:
        return "a.example, b.example,,", ("a.example", "b.example")
    return "a=w:1;b=w:2/h:3", {"a": "w:1", "b": "w:2/h:3"}


@pytest.mark.parametrize("name", settings_fields())
def test_every_setting_has_a_working_env_override(name: str) -> None:
    text, expected = non_default_env_value(name)
    settings = load_settings({"IMGSRV_" + name.upper(): text})
    value = getattr(settings, name)
    assert value == expected
    assert value != getattr(DEFAULTS, name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("1", True), ("true", True), ("YES", True), ("on", True)],
        *[("0", False), ("false", False), ("No", False), ("off", False), ("", False)],
    ],
)
def test_bool_env_spellings(text: str, expected: bool) -> None:
    assert load_settings({"IMGSRV_ACCESS_LOG": text}).access_log is expected


def test_typed_env_overrides() -> None:
    settings = load_settings(
        {
            "IMGSRV_PORT": "9090",
            "IMGSRV_CONNECT_TIMEOUT": "1.25",
            "IMGSRV_ALLOW_SVG": "0",
            "IMGSRV_USER_AGENT": "bot/2",
            "IMGSRV_ALLOWED_SOURCE_HOSTS": "img.example.com,*.cdn.example",
            "IMGSRV_PRESETS": "a=w:1;b=w:2",
        }
    )
    assert settings.port == 9090
    assert settings.connect_timeout == 1.25
    assert settings.allow_svg is False
    assert settings.user_agent == "bot/2"
    assert settings.allowed_source_hosts == ("img.example.com", "*.cdn.example")
    assert settings.presets == {"a": "w:1", "b": "w:2"}


PUBLIC_ENV_NAMES = [
    "IMGSRV_HOST",
    "IMGSRV_PORT",
    "IMGSRV_WORKERS",
    "IMGSRV_SIGNING_KEY",
    "IMGSRV_SIGNING_SALT",
    "IMGSRV_REDIS_URL",
    "IMGSRV_ALLOW_SOURCE_NETWORKS",
    "IMGSRV_SOURCE_BASE_URL",
    "IMGSRV_MAX_SOURCE_BYTES",
    "IMGSRV_MAX_SOURCE_MEGAPIXELS",
]


@pytest.mark.parametrize("env_name", PUBLIC_ENV_NAMES)
def test_public_env_names_map_to_settings(env_name: str) -> None:
    name = env_name.removeprefix("IMGSRV_").lower()
    assert name in settings_fields()
    text, expected = non_default_env_value(name)
    assert getattr(load_settings({env_name: text}), name) == expected


def test_environment_is_read_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSRV_PORT", "9191")
    assert load_settings().port == 9191


def test_overrides_win_over_env() -> None:
    assert load_settings({"IMGSRV_PORT": "9090"}, port=7070).port == 7070


# --------------------------------------------------------------------------- config file


def test_config_file_overlays_defaults_and_env_wins(tmp_path: Path) -> None:
    path = tmp_path / "imgsrv.toml"
    path.write_text(
        'log_level = "warning"\n'  # a top-level key: sections are optional
        + "[server]\nport = 9000\nworkers = 3\n"
        + '[sources]\nallowed_source_hosts = ["a.example", "b.example"]\n'
        + '[presets]\nthumb = "rs:cover:150:150/f:webp"\n'
    )
    settings = load_settings({"IMGSRV_CONFIG": str(path), "IMGSRV_WORKERS": "5"})
    assert settings.log_level == "warning"
    assert settings.port == 9000
    assert settings.workers == 5
    assert settings.allowed_source_hosts == ("a.example", "b.example")
    assert settings.presets == {"thumb": "rs:cover:150:150/f:webp"}
    assert settings.host == DEFAULTS.host


def test_config_file_with_an_unknown_setting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "imgsrv.toml"
    path.write_text("[server]\nprot = 9000\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings({"IMGSRV_CONFIG": str(path)})


def test_config_file_with_a_wrong_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "imgsrv.toml"
    path.write_text('[server]\nport = "eighty"\n')
    with pytest.raises(ConfigError, match="port"):
        load_settings({"IMGSRV_CONFIG": str(path)})


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("env_name", "text"),
    [
        ("IMGSRV_PORT", "eighty"),
        ("IMGSRV_WORKERS", "1.5"),
        ("IMGSRV_CONNECT_TIMEOUT", "soon"),
        ("IMGSRV_ACCESS_LOG", "maybe"),
        ("IMGSRV_SIGNING_KEY", "not-hex"),
        ("IMGSRV_SIGNING_SALT", "abc"),
        ("IMGSRV_ALLOW_SOURCE_NETWORKS", "10.0.0.0/8,not-a-network"),
        ("IMGSRV_JPEG_QUALITY", "0"),
        ("IMGSRV_WEBP_QUALITY", "101"),
        ("IMGSRV_MAX_SOURCE_BYTES", "0"),
        ("IMGSRV_MAX_SOURCE_MEGAPIXELS", "-1"),
        ("IMGSRV_AUTO_FORMATS", "webp,jxl"),
        ("IMGSRV_EGRESS_MONTHLY_BUDGET", "lots"),
        ("IMGSRV_EGRESS_MONTHLY_BUDGET", "5 parsecs"),
        ("IMGSRV_EGRESS_SAVER_AT", "0"),
        ("IMGSRV_EGRESS_SAVER_AT", "1.5"),
        ("IMGSRV_EGRESS_SAVER_QUALITY_STEP", "100"),
        ("IMGSRV_WORKER_METRICS_PORT", "70000"),
    ],
)
def test_bad_values_raise_config_error(env_name: str, text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings({env_name: text})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("4096", 4096),
        ("500GB", 500 * 10**9),
        ("1.5 TB", 1_500_000_000_000),
        ("200MiB", 200 * 2**20),
        ("2gib", 2 * 2**30),
        ("10kb", 10_000),
    ],
)
def test_egress_budget_sizes(text: str, expected: int) -> None:
    assert load_settings({"IMGSRV_EGRESS_MONTHLY_BUDGET": text}).egress_budget_bytes == expected


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.port = 1  # type: ignore[misc]
