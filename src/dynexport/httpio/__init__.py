"""HTTP/1.1 over trio with h11: the utility-link client, the web/simulator server, TLS contexts.

h11 does the protocol, this package does the I/O with trio deadlines (docs/http.md). The client's
``Response`` and the server's ``Response`` differ (one is received, one is sent); the server's is
exported here as ``ServerResponse``.
"""

from dynexport.httpio.client import (
    SEP_XML,
    HttpClient,
    HttpConnectionError,
    HttpError,
    HttpProtocolError,
    HttpStats,
    HttpStatusError,
    HttpTimeout,
    InvalidUrl,
    Response,
    ResponseTooLarge,
    TlsError,
    join_url,
    origin_of,
    parse_retry_after,
    response_retry_after,
)
from dynexport.httpio.server import Handler, Limits, Request, serve_http
from dynexport.httpio.server import Response as ServerResponse
from dynexport.httpio.tls import SEP2_CIPHER, TlsConfigError, client_context, server_context

__all__ = [
    "SEP2_CIPHER",
    "SEP_XML",
    "Handler",
    "HttpClient",
    "HttpConnectionError",
    "HttpError",
    "HttpProtocolError",
    "HttpStats",
    "HttpStatusError",
    "HttpTimeout",
    "InvalidUrl",
    "Limits",
    "Request",
    "Response",
    "ResponseTooLarge",
    "ServerResponse",
    "TlsConfigError",
    "TlsError",
    "client_context",
    "join_url",
    "origin_of",
    "parse_retry_after",
    "response_retry_after",
    "serve_http",
    "server_context",
]
