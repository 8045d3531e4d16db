"""Raw HTTP over a socket, for requests a normal client will not send (foreign Host, slow)."""

from __future__ import annotations

import contextlib

import trio


async def exchange(port: int, data: bytes, *, pause_after: float = 0.0) -> bytes:
    """Sends ``data`` (then waits ``pause_after``), reads until the server closes or 5 s pass."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        if pause_after:
            await trio.sleep(pause_after)
        chunks = []
        with trio.move_on_after(5):
            while True:
                try:
                    got = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not got:
                    break
                chunks.append(got)
                if b"\r\n\r\n" in b"".join(chunks):
                    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        None,
                    )
                    if length is not None and len(body) >= length:
                        break
        return b"".join(chunks)


def get(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def header(response: bytes, name: str) -> str | None:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


async def connect_from(source: str, port: int) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:port from ``source`` (127.0.0.2, 127.0.0.3, ...): each
    loopback address is a distinct client to the server."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


class Unanswered(Exception):
    """The server closed the connection without a byte of response (its connection limit)."""


async def request_from(
    source: str,
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request from ``source``; (status, lowercase headers, body) once the server closes."""
    h = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if body or method in ("POST", "PUT"):
        h["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    stream = await connect_from(source, port)
    async with stream:
        # closed before the request was read (refused): no answer, as below
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(head.encode("latin-1") + b"\r\n" + body)
        data = b""
        while True:
            try:
                got = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not got:
                break
            data += got
    if not data:
        raise Unanswered(f"{method} {path} from {source}: closed without a response")
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers_out = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers_out[k.strip().lower()] = v.strip()
    return int(lines[0].split(" ", 2)[1]), headers_out, rest
