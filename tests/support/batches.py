"""POSTing uplink batches by hand, for the receiver and ingest tests (PROTOCOL.md section 3)."""

from __future__ import annotations

import urllib.error
import urllib.request


def post(url: str, body: bytes, ctype: str = "application/cbor",
         key: str | None = None) -> tuple[int, str]:
    """POST `body` to URL/batches; (status, body text), 4xx and 5xx included."""
    req = urllib.request.Request(url + "/batches", data=body, method="POST",
                                 headers={"Content-Type": ctype})
    if key:
        req.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
