"""The appliance web server: pages, JSON API, live events and the history recorder, all in the
app's nursery (docs/web.md, docs/api.md)."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from dynexport.httpio import Limits, serve_http
from dynexport.httpio.server import ConnectionPool
from dynexport.update.state import UPLOAD_FILE
from dynexport.web.api import AppLike, WebApi, cannot_bind
from dynexport.web.energy import EnergyToday
from dynexport.web.events import Broadcaster
from dynexport.web.history import FLUSH_EVERY_S, History, row_from_status

log = logging.getLogger("dynexport.web")

HISTORY_FILE = "history.sqlite"
ALL_ADDRESSES = "0.0.0.0"
"""Where the web server listens when the configured ``web.host`` is no address of this machine."""
HOST_RECHECK_S = 30.0
"""How often a web server listening on its fallback looks whether ``web.host`` is here now."""
WEB_LIMITS = Limits(
    max_header_bytes=16 * 1024,
    max_body_bytes=256 * 1024,  # the largest legitimate body is a configuration or a PEM chain
    header_timeout=10.0,
    body_timeout=20.0,
    idle_timeout=30.0,
    send_timeout=30.0,
    handler_timeout=60.0,
    max_connections=64,
    max_per_address=12,  # a browser opens up to 6, plus live events and a second tab
    pressure_connections=48,
    pressure_timeout=2.0,
)


async def record_history(
    app: AppLike,
    history: History,
    *,
    every_s: float = 1.0,
    flush_every_s: float = FLUSH_EVERY_S,
    energy: EnergyToday | None = None,
) -> None:
    """Samples the status every ``every_s`` and writes to SQLite every ``flush_every_s``.

    Nothing it meets stops the web server beside it (it shares its nursery): a history that
    cannot be opened is retried at each flush, a status that cannot be built skips a sample.
    A damaged ``history.sqlite`` raised out of here at every start, and the web server never
    answered."""
    try:
        await history.open()
    except Exception:
        log.exception("history: cannot open %s; tried again at the next write", history.path)
    failing = False
    try:
        next_flush = trio.current_time() + flush_every_s
        while True:
            if not app.setup_mode:
                try:
                    status, now = app.status(), app.options.wall_clock()
                    history.add(row_from_status(status, now))
                    if energy is not None:
                        energy.add(status, now, app.time_zone())
                except Exception:
                    if not failing:  # one traceback per episode, not one a second
                        log.exception("history: a sample could not be taken; skipping")
                    failing = True
                else:
                    failing = False
            if trio.current_time() >= next_flush:
                try:
                    await history.flush(app.options.wall_clock())
                except Exception:  # a full or broken card must not stop the web server
                    log.exception("history: writing failed")
                next_flush = trio.current_time() + flush_every_s
            await trio.sleep(every_s)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await history.flush(app.options.wall_clock(), partial=True)
                await history.close()
            except Exception:
                log.exception("history: final write failed")


def _remove_leftover(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


async def serve_web(
    app: AppLike,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    limits: Limits | None = None,
    history_every_s: float = 1.0,
    flush_every_s: float = FLUSH_EVERY_S,
    api_options: dict[str, Any] | None = None,
    pool: ConnectionPool | None = None,
    fallback_host: str = ALL_ADDRESSES,
    host_recheck_s: float = HOST_RECHECK_S,
) -> None:
    """Serves until cancelled; ``nursery.start`` returns the bound port.

    A ``host`` that is no address of this machine (a typo, another site's restored backup, an
    interface gone) is not bound: the server listens on ``fallback_host`` instead, logs a
    warning and says so in the status (an alert). It failed to bind at every start, and the
    web UI, the only way to correct it, was gone for good. Every ``host_recheck_s`` it looks
    again, and moves to ``host`` once it is here: at boot the address may come only with DHCP
    or the Wi-Fi, after the service has started.

    The history recorder and the live-event broadcaster run beside the server. ``limits``,
    ``history_every_s``, ``flush_every_s``, ``api_options`` (keyword arguments of WebApi, e.g.
    ``tls=True``), ``pool`` (to see the connections held, dropped and refused) and
    ``fallback_host`` are for tests and special setups; the app passes none of them."""
    # An upload a restart or a power cut left behind (up to 256 MiB of /data): none can be
    # under way before the server answers, and nothing else would ever remove it.
    _remove_leftover(app.options.data_dir / UPLOAD_FILE)  # one unlink: no thread for it
    history = History(app.options.data_dir / HISTORY_FILE)
    api = WebApi(app, history=history, **(api_options or {}))
    events: Broadcaster = api.events
    async with trio.open_nursery() as nursery:
        api.nursery = nursery
        nursery.start_soon(
            partial(
                record_history,
                app,
                history,
                every_s=history_every_s,
                flush_every_s=flush_every_s,
                energy=api.energy,
            )
        )
        nursery.start_soon(events.run)
        serve = partial(serve_http, api.handle, limits=limits or WEB_LIMITS, pool=pool)
        try:
            bound: Any = await nursery.start(partial(serve, host=host, port=port))
        except OSError as exc:
            why = _not_here(exc)
            if why is None or host == fallback_host:
                raise
            bound = await nursery.start(
                partial(
                    _serve_elsewhere_until_here,
                    serve,
                    api,
                    host=host,
                    port=port,
                    why=why,
                    fallback_host=fallback_host,
                    recheck_s=host_recheck_s,
                )
            )
        task_status.started(bound)


async def _serve_elsewhere_until_here(
    serve: Callable[..., Awaitable[None]],
    api: WebApi,
    *,
    host: str,
    port: int,
    why: str,
    fallback_host: str,
    recheck_s: float,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listens on ``fallback_host`` while ``host`` is no address here, then on ``host``
    (the same port), and on the fallback again should it go before it could be bound."""
    moved_before = False
    while True:
        log.warning("web.host %s %s: listening on %s instead", host, why, fallback_host)
        api.listen_fallback = (
            f"web.host {host} {why}: the web server listens on {fallback_host} instead"
        )
        async with trio.open_nursery() as fallback:
            port = await fallback.start(partial(serve, host=fallback_host, port=port))
            task_status.started(port)
            task_status = trio.TASK_STATUS_IGNORED
            if moved_before:
                # A move that failed: the address probes as here but cannot take the port (a
                # name with one address here and one not, the port taken on it). Tried again
                # only once it has been gone and come back: trying at every look spun this
                # loop at first, then cut every connection on the fallback each 30 s.
                while await trio.to_thread.run_sync(_here, host):  # noqa: ASYNC110 (polled)
                    await trio.sleep(recheck_s)
            while not await trio.to_thread.run_sync(_here, host):  # noqa: ASYNC110 (polled)
                await trio.sleep(recheck_s)
            fallback.cancel_scope.cancel()
        moved_before = True
        try:
            async with trio.open_nursery() as own:
                await own.start(partial(serve, host=host, port=port))
                api.listen_fallback = None
                log.info("web.host %s is here now: the web server listens on it", host)
        except* OSError as failed:  # gone again before it could be bound: the fallback again
            exc = failed.exceptions[0]
            why = (_not_here(exc) if isinstance(exc, OSError) else None) or "could not be bound"


def _here(host: str) -> bool:
    """``host`` is an address of this machine: a socket can be bound to it (any port)."""
    return cannot_bind(host) is None


def _not_here(exc: OSError) -> str | None:
    """Why binding failed when the host is no address of this machine, else None (a port in
    use, say, is retried as before)."""
    if isinstance(exc, socket.gaierror):
        return "is not an address of this machine (not a name it knows)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "is not an address of this machine"
    return None
