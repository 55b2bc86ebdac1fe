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
