"""The integrations as the app sees them: their tasks, their extra limits, their status.

The app builds one ``Integrations`` and keeps it across generations (a command limit or the
last prices survive a device change). Each task idles while its section is not configured and
follows configuration changes by itself, so enabling MQTT from the web page needs no restart.

The MQTT bridge and the price poller (and their modules: paho's adapter, Home Assistant's
discovery, the Amber client) are built the first time their section is configured, not before:
most sites use neither, and the service's memory is mostly the modules it imports
(docs/decisions.md, "Lazy imports on the service's path"). Until then their status and their
extra limits are what an unconfigured bridge or poller reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from dynexport.integrations.limitsources import ExtraLimit

if TYPE_CHECKING:
    from dynexport.integrations.amber import PricePoller
    from dynexport.integrations.mqtt import MqttBridge
    from dynexport.system.config import Config

CONFIG_CHECK_S = 1.0
"""How often an idle task looks for its section (the bridge and the poller look as often)."""

MQTT_OFF: dict[str, Any] = {
    "configured": False,
    "state": "off",
    "connected": False,
    "broker": None,
    "topicPrefix": None,
    "lastError": None,
    "connects": 0,
    "published": 0,
    "droppedRounds": 0,
    "command": None,
    "commandError": None,
    "commandSubscription": None,
}
"""``MqttBridge.status`` of a bridge never configured (tests/test_lazy_imports.py keeps the two
equal)."""
PRICE_OFF: dict[str, Any] = {"configured": False}
"""``PricePoller.status`` while ``price`` is not configured."""


class Integrations:
    def __init__(
        self,
        get_config: Callable[[], Config],
        get_status: Callable[[], Mapping[str, Any]],
        *,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._get_config = get_config
        self._get_status = get_status
        self._wake = wake
        self._mqtt: MqttBridge | None = None
        self._price: PricePoller | None = None

    @property
    def mqtt(self) -> MqttBridge:
        """The MQTT bridge, built (and paho's adapter imported) on first use."""
        if self._mqtt is None:
            from dynexport.integrations.mqtt import MqttBridge

            get_config = self._get_config
            self._mqtt = MqttBridge(lambda: get_config().mqtt, self._get_status, wake=self._wake)
        return self._mqtt

    @property
    def price(self) -> PricePoller:
        """The price poller, built (and the Amber client imported) on first use."""
        if self._price is None:
            from dynexport.integrations.amber import PricePoller

            get_config = self._get_config
            self._price = PricePoller(lambda: get_config().price, wake=self._wake)
        return self._price

    def _mqtt_in_use(self) -> bool:
        return self._mqtt is not None or self._get_config().mqtt is not None

    def _price_in_use(self) -> bool:
        return self._price is not None or self._get_config().price is not None

    def tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """(name, task) for the app's nursery; each one is run under ``supervised``."""
        return [("mqtt", self._run_mqtt), ("price", self._run_price)]

    async def _run_mqtt(self) -> None:
        while not self._mqtt_in_use():  # noqa: ASYNC110 (the app replaces its config silently)
            await trio.sleep(CONFIG_CHECK_S)
        await self.mqtt.run()

    async def _run_price(self) -> None:
        while not self._price_in_use():  # noqa: ASYNC110 (the app replaces its config silently)
            await trio.sleep(CONFIG_CHECK_S)
        await self.price.run()

    def extra_limits(self, now: float) -> list[ExtraLimit]:
        """Every extra export limit in force at ``now`` (the app's trio clock)."""
        mqtt = self.mqtt.extra_limits(now) if self._mqtt_in_use() else []
        price = self.price.extra_limits(now) if self._price_in_use() else []
        return [*mqtt, *price]

    def status(self) -> dict[str, Any]:
        """The status document's ``integrations`` entry (docs/api.md, docs/integrations.md)."""
        return {
            "mqtt": self.mqtt.status(trio.current_time())
            if self._mqtt_in_use()
            else dict(MQTT_OFF),
            "price": self.price.status() if self._price_in_use() else dict(PRICE_OFF),
        }


def integrations_status(integrations: Integrations | None) -> dict[str, Any]:
    """``status()["integrations"]``, also before the first generation built them."""
    if integrations is None:
        return {"mqtt": {"configured": False}, "price": {"configured": False}}
    return integrations.status()
