"""The one way negalign talks to an OpenAI-compatible HTTP endpoint (the LLM judge, a generation server): httpx,
redirects never followed, and a POST retried on 429, 5xx, timeouts and dropped connections with exponential
backoff. Both clients raise the same errors, so a caller tells a failed request from a malformed reply the same
way whichever endpoint it asked."""

from __future__ import annotations

import json
import threading
import time

import httpx


class RequestFailed(RuntimeError):
    """A request that gave no usable reply: an HTTP error, a redirect, a dropped connection or a timeout after
    the retries, or a body that is not what the endpoint should answer. `status`: the HTTP status when the
    endpoint answered with one (None when it did not answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class MalformedResponse(RequestFailed):
    """The endpoint answered 200, but not with the body the API defines (empty, not JSON, a field missing)."""

    def __init__(self, url: str, problem: str, raw: str):
        super().__init__(f"{url}: {problem}: {raw[:200]!r}" if raw.strip() else f"{url}: {problem}", 200)
        self.raw = raw


class HttpSession:
    """An object that owns one httpx client (`_http`, made by the subclass): closed by close() or at the end of a
    `with` block, so neither the judge nor the generation client leaks its connection pool."""

    _http: httpx.Client

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shown_url(url: str) -> str:
    """`url` without a user:password part, for messages and result files."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url


def retry_after(response: httpx.Response | None, attempt: int, backoff_s: float = 1.0) -> float:
    """Seconds to wait before the next try: the server's Retry-After (in seconds, up to 30), else exponential
    backoff from `backoff_s` (1, 2, 4, 8, 10, 10 ... with the default), capped at 10."""
    header = response.headers.get("retry-after", "") if response is not None else ""
    try:
        return min(max(float(header), 0.0), 30.0)
    except ValueError:
        return float(min(backoff_s * 2 ** attempt, 10.0))


def json_body(response: httpx.Response, url: str) -> dict:
    """A reply's JSON object; an empty or non-JSON body, or one that is no object, is a MalformedResponse."""
    raw = response.text
    if not raw.strip():
        raise MalformedResponse(url, "empty reply", raw)
    try:
        body = json.loads(raw)
    except ValueError:
        raise MalformedResponse(url, "reply is not JSON", raw) from None
    if not isinstance(body, dict):
        raise MalformedResponse(url, "reply is not a JSON object", raw)
    return body


def post_with_retries(http: httpx.Client, url: str, body: dict | None, *, retries: int, shown: str | None = None,
                      key_for: str = "--base-url", backoff_s: float = 1.0,
                      abort: threading.Event | None = None) -> httpx.Response:
    """POST `body` as JSON (GET when it is None) and return the successful response. 429, 5xx and transport errors (refused, reset,
    dropped, timed out) are tried again `retries` times, waiting retry_after; any other status, a redirect, or
    the last failure raises RequestFailed. `abort`, once set by another thread (a sibling request failed for
    good), stops retrying at once: the run is ending and more waiting only delays the one-line error."""
    shown = shown or shown_url(url)
    for attempt in range(retries + 1):
        response = None
        try:
            response = http.post(url, json=body) if body is not None else http.get(url)
        except httpx.TransportError as error:
            if attempt == retries or (abort is not None and abort.is_set()):
                raise RequestFailed(f"{shown}: {type(error).__name__}: {error or 'connection failed'}") from error
        else:
            if response.is_redirect:
                target = httpx.URL(url).join(response.headers.get("location", ""))
                raise RequestFailed(f"{shown}: HTTP {response.status_code} redirect to {target.netloc.decode()} not "
                                    f"followed (the API key is sent to {key_for}'s host only); give the endpoint's "
                                    f"final address as {key_for}")
            if response.is_success:
                return response
            retryable = response.status_code == 429 or response.status_code >= 500
            if not retryable or attempt == retries or (abort is not None and abort.is_set()):
                text = " ".join(response.text[:300].split())
                raise RequestFailed(f"{shown}: HTTP {response.status_code}: {text}", response.status_code)
        wait = retry_after(response, attempt, backoff_s)
        if abort is not None:
            if abort.wait(wait):  # woken early: the run is ending
                raise RequestFailed(f"{shown}: stopped retrying (another request failed)")
        else:
            time.sleep(wait)
    raise AssertionError("unreachable")
