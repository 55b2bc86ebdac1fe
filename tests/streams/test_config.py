"""streams.config: settings read from the environment."""

from __future__ import annotations

import pytest

from streams.config import ConfigError, Settings


def test_direct_delivery_is_on_unless_the_environment_turns_it_off(monkeypatch):
    monkeypatch.delenv("RISKWATCH_DIRECT_DELIVERY", raising=False)
    assert Settings.from_env().direct_delivery is True
    monkeypatch.setenv("RISKWATCH_DIRECT_DELIVERY", "off")
    assert Settings.from_env().direct_delivery is False
    monkeypatch.setenv("RISKWATCH_DIRECT_DELIVERY", "maybe")
    with pytest.raises(ConfigError, match="RISKWATCH_DIRECT_DELIVERY 'maybe'"):
        Settings.from_env()


@pytest.mark.parametrize(("addr", "expected"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("[::1]:9464", ("::1", 9464)),
    ("localhost:1", ("localhost", 1)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_metrics_addresses_parse_to_what_the_server_binds(addr, expected):
    from streams.config import parse_addr

    assert parse_addr(addr) == expected


@pytest.mark.parametrize(("addr", "message"), [
    ("127.0.0.1:99999", "port 99999 is outside 1-65535"),
    ("127.0.0.1:0", "port 0 is outside 1-65535"),
    ("::1:9464", "IPv6 address goes in brackets"),
    ("[::1]9464", "expected host:port"),
    ("9464", "expected host:port"),
])
def test_a_bad_metrics_address_is_refused_at_start_naming_the_setting(monkeypatch, addr,
                                                                      message):
    """A port outside 1-65535 was accepted, and the worker crashed later in a task trying
    to bind it; [::1]:9464 was bound as the host '[::1]'."""
    monkeypatch.setenv("RISKWATCH_METRICS_ADDR", addr)
    with pytest.raises(ConfigError, match=r"RISKWATCH_METRICS_ADDR.*" + message.replace(
            "[", r"\[").replace("]", r"\]")):
        Settings.from_env()


@pytest.mark.parametrize("url", ["kafka://h:99999", "kafka://h:0", "kafka://a:1,b:70000",
                                 "kafka://::1:9092"])
def test_a_broker_url_with_a_bad_port_is_refused_naming_the_setting(monkeypatch, url):
    monkeypatch.setenv("RISKWATCH_BROKER", url)
    with pytest.raises(ConfigError, match="--broker"):
        Settings.from_env()


def test_a_broker_url_keeps_bracketed_ipv6_hosts():
    from streams.config import parse_broker_url

    assert parse_broker_url("kafka://[::1]:9092,b:2") == ["[::1]:9092", "b:2"]


def test_the_producer_batch_size_reaches_faust_and_is_bounded(tmp_path):
    from streams.app import create_app

    default = Settings(data_dir=tmp_path)
    assert default.producer_max_batch_size == 512 * 1024
    app = create_app(Settings(data_dir=tmp_path, producer_max_batch_size=300_000)).app
    assert app.conf.producer_max_batch_size == 300_000
    for size in (16 * 1024 - 1, 1_000_001):
        with pytest.raises(ConfigError, match=f"producer_max_batch_size {size}: expected "
                                              "16,384 to 1,000,000 bytes"):
            Settings(producer_max_batch_size=size)
