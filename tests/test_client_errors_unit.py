"""The client's error mapping, unit by unit: a hub's (or a proxy's, or an
object store's) error response becomes the exception class the hub raised,
with a short, printable message, whether the body was read or streamed.

Every response here comes from ``httpx.MockTransport``; nothing listens.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from peft_hub.client.http import ERROR_BODY_LIMIT, MESSAGE_LIMIT, build_session, json_body, raise_for_status, send
from peft_hub.errors import (
    ERRORS_BY_CODE,
    AdapterNotFoundError,
    AuthenticationError,
    ConflictError,
    HubUnreachableError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PeftHubError,
    PermissionDeniedError,
    RateLimitedError,
    StorageError,
)

BASE = "http://hub.test"


def _session(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return build_session(BASE, "phub_" + "x" * 40, httpx.MockTransport(handler))


def _raised(response: httpx.Response, url: str = "/api/adapters/a/b", *, stream: bool = False) -> PeftHubError:
    """The exception ``raise_for_status`` raises for ``response`` served at ``url``."""
    with _session(lambda request: response) as session:
        got = session.send(session.build_request("GET", url), stream=stream)
        with pytest.raises(PeftHubError) as info:
            raise_for_status(got)
    return info.value


class _Chunks(httpx.SyncByteStream):
    """A response body that arrives in pieces, optionally breaking, optionally endless."""

    def __init__(self, chunks: list[bytes], *, then: Exception | None = None, forever: bool = False) -> None:
        self.chunks, self.then, self.forever, self.closed, self.sent = chunks, then, forever, False, 0

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        while self.forever:
            self.sent += 1
            yield b"A" * 8192
        if self.then is not None:
            raise self.then

    def close(self) -> None:
        self.closed = True


# --- the hub's own JSON errors ------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ERRORS_BY_CODE))
def test_every_code_comes_back_as_its_class(code):
    cls = ERRORS_BY_CODE[code]
    error = _raised(httpx.Response(cls.status_code if cls.status_code >= 400 else 500,
                                   json={"error": code, "detail": f"the {code} happened"}))
    assert type(error) is cls
    assert str(error) == f"the {code} happened"
    assert error.http_status == (cls.status_code if cls.status_code >= 400 else 500)


def test_the_code_header_names_the_class_when_the_body_is_not_json():
    error = _raised(httpx.Response(409, text="<html>oops</html>",
                                   headers={"X-Error-Code": "conflict", "X-Error-Message": "tag moved"}))
    assert type(error) is ConflictError and str(error) == "tag moved"


def test_the_body_code_wins_over_the_header():
    error = _raised(httpx.Response(404, json={"error": "adapter_not_found", "detail": "no a/b"},
                                   headers={"X-Error-Code": "conflict"}))
    assert type(error) is AdapterNotFoundError


@pytest.mark.parametrize(("status", "cls"), [
    (400, InvalidInputError), (401, AuthenticationError), (403, PermissionDeniedError), (404, NotFoundError),
    (409, ConflictError), (413, PayloadTooLargeError), (429, RateLimitedError), (502, StorageError),
    (503, HubUnreachableError), (500, PeftHubError),
])
def test_an_unknown_code_falls_back_to_the_class_of_the_status(status, cls):
    error = _raised(httpx.Response(status, json={"error": "from_a_newer_hub", "detail": "something new"}))
    assert isinstance(error, cls), type(error)
    assert error.http_status == status


def test_a_validation_detail_that_is_a_list_becomes_one_json_line():
    detail = [{"loc": ["body", "name"], "msg": "field required", "type": "missing"}]
    error = _raised(httpx.Response(422, json={"error": "invalid_input", "detail": detail}))
    assert isinstance(error, InvalidInputError)
    assert json.loads(str(error)) == detail and "\n" not in str(error)


def test_a_429_keeps_the_wait_the_server_asked_for():
    error = _raised(httpx.Response(429, json={"error": "rate_limited", "detail": "slow down"},
                                   headers={"Retry-After": "7"}))
    assert isinstance(error, RateLimitedError) and error.retry_after == 7 and error.retry_after_header == 7.0
    absurd = _raised(httpx.Response(429, json={"error": "rate_limited", "detail": "x"},
                                    headers={"Retry-After": "9" * 40}))
    assert absurd.retry_after == 60 and absurd.retry_after_header is None


# --- what is not the hub -------------------------------------------------------------


def test_a_bare_404_says_the_url_is_not_a_hub_route():
    error = _raised(httpx.Response(404, json={"detail": "Not Found"}), "/api/api/adapters?token=secret")
    assert isinstance(error, NotFoundError)
    assert "not a peft-hub route" in str(error) and "PEFT_HUB_URL" in str(error)
    assert "secret" not in str(error)


def test_an_object_store_xml_error_is_read_and_its_signature_not_shown():
    body = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    error = _raised(httpx.Response(403, content=body), "/bucket/blob?X-Amz-Signature=d3adb33f")
    assert isinstance(error, PermissionDeniedError)
    assert "AccessDenied: Request has expired" in str(error)
    assert "d3adb33f" not in str(error) and "/bucket/blob" in str(error)


def test_a_proxy_page_gives_the_status_and_the_url_without_its_query():
    error = _raised(httpx.Response(502, text="<html>Bad Gateway</html>"), "/api/x?sig=abc")
    assert isinstance(error, StorageError)
    assert str(error) == f"HTTP 502 from {BASE}/api/x"


def test_control_characters_never_reach_the_terminal_and_messages_are_capped():
    detail = "\x1b[2J\x1b]0;pwned\x07\u202eevil\r" + "x" * 10_000
    error = _raised(httpx.Response(400, json={"error": "invalid_input", "detail": detail}))
    text = str(error)
    assert type(error) is InvalidInputError
    assert "\x1b" not in text and "\u202e" not in text and "\r" not in text and "\x07" not in text
    assert text.startswith("\\x1b[2J") and len(text) <= MESSAGE_LIMIT + 1


def test_a_body_past_the_read_cap_is_not_parsed():
    flood = json.dumps({"error": "conflict", "detail": "x" * (2 * ERROR_BODY_LIMIT)})
    error = _raised(httpx.Response(500, text=flood))
    assert type(error) is PeftHubError and str(error) == f"HTTP 500 from {BASE}/api/adapters/a/b"


def test_json_nested_too_deep_is_just_a_body():
    error = _raised(httpx.Response(500, content=b"[" * 200_000))
    assert type(error) is PeftHubError and "HTTP 500" in str(error)


def test_success_and_redirects_pass_through_and_redirects_are_not_followed():
    with _session(lambda r: httpx.Response(302, headers={"Location": "http://evil.test/"})) as session:
        response = raise_for_status(session.get("/api/x"))
    assert response.status_code == 302


# --- streamed responses --------------------------------------------------------------


def test_a_streamed_error_is_read_and_mapped_and_its_stream_closed():
    stream = _Chunks([b'{"error": "entry_not_found", ', b'"detail": "no file x.bin"}'])
    error = _raised(httpx.Response(404, stream=stream), stream=True)
    assert type(error).__name__ == "EntryNotFoundError" and str(error) == "no file x.bin"
    assert stream.closed


def test_a_streamed_error_that_breaks_midway_still_gives_the_class_of_the_status():
    stream = _Chunks([b'{"error": "forb'], then=httpx.ReadError("connection reset"))
    error = _raised(httpx.Response(403, stream=stream), stream=True)
    assert isinstance(error, PermissionDeniedError)
    assert stream.closed


def test_an_endless_streamed_error_is_read_only_up_to_the_cap():
    stream = _Chunks([], forever=True)
    error = _raised(httpx.Response(500, stream=stream), stream=True)
    assert type(error) is PeftHubError
    assert stream.sent * 8192 <= ERROR_BODY_LIMIT + 8192 and stream.closed


# --- send(): transport failures ------------------------------------------------------


def test_nothing_listening_is_one_line_naming_the_fix():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with _session(refuse) as session, pytest.raises(HubUnreachableError) as info:
        send(session, "GET", "/api/health")
    assert "nothing answers there" in str(info.value) and BASE in str(info.value)


def test_a_body_that_fails_to_decode_is_a_bad_response():
    def gzip_lie(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"not gzip at all", headers={"Content-Encoding": "gzip"})

    with _session(gzip_lie) as session, pytest.raises(HubUnreachableError, match="bad response"):
        send(session, "GET", "/api/x")


def test_send_raises_the_mapped_error_and_does_not_retry_a_4xx():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401, json={"error": "unauthenticated", "detail": "bad token"})

    with _session(handler) as session, pytest.raises(AuthenticationError, match="bad token"):
        send(session, "GET", "/api/whoami")
    assert len(calls) == 1
    assert calls[0].headers["authorization"].startswith("Bearer phub_")


def test_a_success_that_is_not_json_is_one_clear_error():
    with _session(lambda r: httpx.Response(200, text="<html>captive portal</html>")) as session:
        response = session.get("/api/x?k=v")
    with pytest.raises(PeftHubError, match="not JSON") as info:
        json_body(response)
    assert "k=v" not in str(info.value)
    with _session(lambda r: httpx.Response(204)) as session:
        assert json_body(session.get("/api/x")) is None
