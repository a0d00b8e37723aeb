"""Real HTTP requests from the control host to lab addresses, with small timeouts and no proxies."""
from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

BACKEND = re.compile(r"opslab backend ([A-Za-z0-9_.-]+)")


@dataclass(frozen=True)
class Reply:
    """What one request got: a status (None when no response) and the body, or the error."""

    status: int | None
    body: str = ""
    error: str = ""
    served_by: str = ""

    @property
    def ok(self) -> bool:
        """A 2xx response came back."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def backend(self) -> str:
        """The backend named by an opslab backend page, or ''."""
        match = BACKEND.search(self.body)
        return match.group(1) if match else ""

    def describe(self) -> str:
        """`200`, or the error in a few words."""
        return str(self.status) if self.status is not None else self.error


def client(timeout: float = 2.0) -> httpx.Client:
    """A client that ignores proxy settings, accepts self-signed certs and opens a fresh connection per request."""
    return httpx.Client(timeout=timeout, verify=False, trust_env=False,
                        limits=httpx.Limits(max_keepalive_connections=0))


def get(url: str, http: httpx.Client | None = None, timeout: float = 2.0) -> Reply:
    """GET `url`; transport errors become a Reply with status None."""
    own = http is None
    http = http or client(timeout)
    try:
        response = http.get(url)
        return Reply(response.status_code, response.text[:2000],
                     served_by=response.headers.get("x-served-by", ""))
    except httpx.HTTPError as exc:
        return Reply(None, error=f"{type(exc).__name__}: {exc}"[:200])
    finally:
        if own:
            http.close()


def url(address: str, port: int, path: str = "/", scheme: str = "http") -> str:
    """`scheme://address[:port]path`, leaving out the scheme's default port."""
    default = {"http": 80, "https": 443}[scheme]
    netloc = address if port == default else f"{address}:{port}"
    return f"{scheme}://{netloc}{path}"
