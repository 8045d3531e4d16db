"""The integrations as the app sees them: their tasks, their extra limits, their status.

The app builds one ``Integrations`` and keeps it across generations (a command limit or the
last prices survive a device change). Each task idles while its section is not configured and
follows configuration changes by itself, so enabling MQTT from the web page needs no restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from dynexport.integrations.amber import PricePoller
from dynexport.integrations.limitsources import ExtraLimit
from dynexport.integrations.mqtt import MqttBridge
from dynexport.system.config import Config


class Integrations:
    def __init__(
        self,
        get_config: Callable[[], Config],
        get_status: Callable[[], Mapping[str, Any]],
        *,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.mqtt = MqttBridge(lambda: get_config().mqtt, get_status, wake=wake)
        self.price = PricePoller(lambda: get_config().price, wake=wake)

    def tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """(name, task) for the app's nursery; each one is run under ``supervised``."""
        return [("mqtt", self.mqtt.run), ("price", self.price.run)]

    def extra_limits(self, now: float) -> list[ExtraLimit]:
        """Every extra export limit in force at ``now`` (the app's trio clock)."""
        return [*self.mqtt.extra_limits(now), *self.price.extra_limits(now)]

    def status(self) -> dict[str, Any]:
        """The status document's ``integrations`` entry (docs/api.md, docs/integrations.md)."""
        return {"mqtt": self.mqtt.status(trio.current_time()), "price": self.price.status()}


def integrations_status(integrations: Integrations | None) -> dict[str, Any]:
    """``status()["integrations"]``, also before the first generation built them."""
    if integrations is None:
        return {"mqtt": {"configured": False}, "price": {"configured": False}}
    return integrations.status()
