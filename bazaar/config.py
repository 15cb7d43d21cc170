"""Configuration: frozen dataclasses built from BAZAAR_* variables (SPEC section 5).

`from_env()` is the only reader of the environment. A malformed value is a
`ConfigError` whose message names the variable, so a launcher can print one
line and exit instead of a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_CATALOG = "tcp://127.0.0.1:5555"
DEFAULT_CATALOG_PUB = "tcp://127.0.0.1:5556"
DEFAULT_ORDER_REPLICAS = "1=tcp://127.0.0.1:5561,2=tcp://127.0.0.1:5562,3=tcp://127.0.0.1:5563"
DEFAULT_BIND_HOST = "127.0.0.1"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_HOST = re.compile(r"^([A-Za-z0-9_.\-]+|[0-9A-Fa-f:.]+)$")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_ENDPOINT = re.compile(r"^tcp://(\*|[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


def parse_endpoint(value: str, var: str) -> str:
    match = _ENDPOINT.match(value.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(f"{var}: {value!r} is not an endpoint like tcp://host:port")
    return value.strip()


def parse_replicas(value: str, var: str = "BAZAAR_ORDER_REPLICAS") -> dict[int, str]:
    replicas: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        rid, sep, endpoint = item.partition("=")
        if not sep or not rid.strip().isdigit() or int(rid) <= 0:
            raise ConfigError(f"{var}: {item!r} is not like 1=tcp://host:port")
        if int(rid) in replicas:
            raise ConfigError(f"{var}: replica id {int(rid)} appears twice")
        replicas[int(rid)] = parse_endpoint(endpoint, var)
    if not replicas:
        raise ConfigError(f"{var}: no replicas given")
    return dict(sorted(replicas.items()))


def parse_int(value: str, var: str, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        number = int(value.strip(), 10)
    except ValueError:
        raise ConfigError(f"{var}: {value!r} is not an integer") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigError(f"{var}: {number} must be {bound}")
    return number


def parse_bool(value: str, var: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{var}: {value!r} is not one of 1/0, true/false, yes/no")


def parse_host(value: str, var: str) -> str:
    host = value.strip()
    if not _HOST.match(host):
        raise ConfigError(f"{var}: {value!r} is not a host name or IP address")
    return host


@dataclass(frozen=True)
class Config:
    catalog: str = DEFAULT_CATALOG
    catalog_pub: str = DEFAULT_CATALOG_PUB
    order_replicas: dict[int, str] = field(
        default_factory=lambda: parse_replicas(DEFAULT_ORDER_REPLICAS)
    )
    order_id: int | None = None
    data_dir: Path = Path("./data")
    cache_size: int = 100
    http_port: int = 8080
    log_level: str = "INFO"
    # The host services bind their listeners to (the image sets 0.0.0.0).
    bind_host: str = "127.0.0.1"
    # A service's own /metrics port; 0 = off (the front end also serves /metrics on http_port).
    metrics_port: int = 0
    # None: <data_dir>/keys, where `make run` keeps them (the image sets /keys).
    keys_dir: Path | None = None
    insecure: bool = False  # plaintext ZeroMQ, no roles (SPEC 2: an explicit opt-out)

    @property
    def keys_path(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.data_dir / "keys"

    def bind(self, endpoint: str) -> str:
        """`tcp://host:port` -> `tcp://<bind_host>:port`: the port comes from the endpoint."""
        if not endpoint.startswith("tcp://"):
            return endpoint
        port = endpoint.rsplit(":", 1)[1]
        host = "*" if self.bind_host in ("0.0.0.0", "*") else self.bind_host
        return f"tcp://{f'[{host}]' if ':' in host else host}:{port}"

    def with_(self, **changes) -> Config:
        """A copy with some fields changed (command-line flags override env)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def from_env(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    get = env.get
    kwargs: dict = {}
    if get("BAZAAR_CATALOG"):
        kwargs["catalog"] = parse_endpoint(env["BAZAAR_CATALOG"], "BAZAAR_CATALOG")
    if get("BAZAAR_CATALOG_PUB"):
        kwargs["catalog_pub"] = parse_endpoint(env["BAZAAR_CATALOG_PUB"], "BAZAAR_CATALOG_PUB")
    if get("BAZAAR_ORDER_REPLICAS"):
        kwargs["order_replicas"] = parse_replicas(env["BAZAAR_ORDER_REPLICAS"])
    if get("BAZAAR_ORDER_ID"):
        kwargs["order_id"] = parse_int(env["BAZAAR_ORDER_ID"], "BAZAAR_ORDER_ID", minimum=1)
    if get("BAZAAR_DATA_DIR"):
        kwargs["data_dir"] = Path(env["BAZAAR_DATA_DIR"])
    if get("BAZAAR_CACHE_SIZE"):
        kwargs["cache_size"] = parse_int(env["BAZAAR_CACHE_SIZE"], "BAZAAR_CACHE_SIZE")
    if get("BAZAAR_HTTP_PORT"):
        kwargs["http_port"] = parse_int(env["BAZAAR_HTTP_PORT"], "BAZAAR_HTTP_PORT", 1, 65535)
    if get("BAZAAR_LOG_LEVEL"):
        level = env["BAZAAR_LOG_LEVEL"].strip().upper()
        if level not in LOG_LEVELS:
            raise ConfigError(f"BAZAAR_LOG_LEVEL: {level!r} is not one of {', '.join(LOG_LEVELS)}")
        kwargs["log_level"] = level
    if get("BAZAAR_BIND_HOST"):
        kwargs["bind_host"] = parse_host(env["BAZAAR_BIND_HOST"], "BAZAAR_BIND_HOST")
    if get("BAZAAR_METRICS_PORT"):
        kwargs["metrics_port"] = parse_int(
            env["BAZAAR_METRICS_PORT"], "BAZAAR_METRICS_PORT", 0, 65535
        )
    if get("BAZAAR_KEYS_DIR"):
        kwargs["keys_dir"] = Path(env["BAZAAR_KEYS_DIR"])
    if "BAZAAR_INSECURE" in env:
        kwargs["insecure"] = parse_bool(env["BAZAAR_INSECURE"], "BAZAAR_INSECURE")
    return Config(**kwargs)
