from pathlib import Path

import pytest

from bazaar.config import Config, ConfigError, from_env


def test_defaults_match_the_spec():
    cfg = from_env({})
    assert cfg.catalog == "tcp://127.0.0.1:5555"
    assert cfg.catalog_pub == "tcp://127.0.0.1:5556"
    assert cfg.order_replicas == {
        1: "tcp://127.0.0.1:5561",
        2: "tcp://127.0.0.1:5562",
        3: "tcp://127.0.0.1:5563",
    }
    assert cfg.data_dir == Path("./data")
    assert cfg.http_port == 8080
    assert cfg.order_id is None


def test_every_variable_is_read():
    cfg = from_env(
        {
            "BAZAAR_CATALOG": "tcp://catalog:6000",
            "BAZAAR_CATALOG_PUB": "tcp://catalog:6001",
            "BAZAAR_ORDER_REPLICAS": "2=tcp://b:2, 1=tcp://a:1",
            "BAZAAR_ORDER_ID": "2",
            "BAZAAR_DATA_DIR": "/tmp/x",
            "BAZAAR_CACHE_SIZE": "0",
            "BAZAAR_HTTP_PORT": "9000",
            "BAZAAR_LOG_LEVEL": "debug",
        }
    )
    assert cfg == Config(
        catalog="tcp://catalog:6000",
        catalog_pub="tcp://catalog:6001",
        order_replicas={1: "tcp://a:1", 2: "tcp://b:2"},
        order_id=2,
        data_dir=Path("/tmp/x"),
        cache_size=0,
        http_port=9000,
        log_level="DEBUG",
    )


@pytest.mark.parametrize(
    "var, value",
    [
        ("BAZAAR_CATALOG", "localhost:5555"),
        ("BAZAAR_CATALOG", "tcp://host:99999"),
        ("BAZAAR_CATALOG_PUB", "udp://x:1"),
        ("BAZAAR_ORDER_REPLICAS", "1:tcp://a:1"),
        ("BAZAAR_ORDER_REPLICAS", "x=tcp://a:1"),
        ("BAZAAR_ORDER_REPLICAS", "1=tcp://a:1,1=tcp://b:2"),
        ("BAZAAR_ORDER_REPLICAS", ","),
        ("BAZAAR_ORDER_ID", "0"),
        ("BAZAAR_CACHE_SIZE", "-1"),
        ("BAZAAR_CACHE_SIZE", "lots"),
        ("BAZAAR_HTTP_PORT", "70000"),
        ("BAZAAR_LOG_LEVEL", "chatty"),
    ],
)
def test_malformed_values_name_the_variable(var, value):
    with pytest.raises(ConfigError) as exc:
        from_env({var: value})
    assert str(exc.value).startswith(var)


def test_flags_override_env_but_none_keeps_env():
    cfg = from_env({"BAZAAR_HTTP_PORT": "9000"})
    assert cfg.with_(http_port=None).http_port == 9000
    assert cfg.with_(http_port=9100).http_port == 9100
