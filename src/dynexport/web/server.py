"""The appliance web server: the JSON API (and the pages, with the web UI) in the app nursery."""

from __future__ import annotations

from functools import partial
from typing import Any

import trio

from dynexport.httpio import serve_http
from dynexport.web.api import StatusSource, make_handler


async def serve_web(
    app: StatusSource,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serves until cancelled; ``nursery.start`` returns the bound port."""
    async with trio.open_nursery() as nursery:
        bound: Any = await nursery.start(
            partial(serve_http, make_handler(app), host=host, port=port)
        )
        task_status.started(bound)
