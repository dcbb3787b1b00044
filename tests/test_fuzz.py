"""Fuzzing the API on a real stack (loopback only, bounded).

1. Schemathesis generates requests from our own OpenAPI document, valid and
   invalid, for every operation: no response may be a 5xx, and every
   response must be one the schema documents, in the documented shape.
2. Hand-picked hostile inputs that generators rarely reach: huge and
   endless bodies, deeply nested JSON, invalid UTF-8, wrong content types,
   absurd `wait` values, malformed Last-Event-ID, junk in paths and headers.
"""

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from harness.processes import start_redis, wait_for
from tests.conftest import Stack
from tests.test_jobs import unique, wait_finished

pytestmark = pytest.mark.e2e

KEY = f"dj_fuzz_{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Per operation and generation mode; about 15 operations, so a few hundred requests in all.
EXAMPLES = 12


@pytest.fixture(scope="module")
def fuzzed(lm_api_base: str) -> Iterator[Stack]:
    redis_proc, url = start_redis("redis-fuzz")
    if redis_proc is None:
        pytest.fail("the fuzz tests need redis-server for a private stack")
    stack = Stack(url, lm_api_base, [redis_proc])
    stack.extra_env = {
        "API_KEYS": hashlib.sha256(KEY.encode()).hexdigest(),
        # Bounded: no generated request can hold a connection for long.
        "WAIT_MAX_S": "2",
        "BATCH_MAX_ITEMS": "20",
        "KEY_MAX_SSE_STREAMS": "4",
    }
    stack.start_worker(name="worker-fuzz")
    stack.start_worker(name="worker-fuzz-bulk", queues="bulk")
    stack.start_api()
    yield stack
    stack.stop()


@pytest.fixture
def api(fuzzed: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzzed.api_url, timeout=30, headers=AUTH) as client:
        yield client


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_generated_requests_get_no_5xx_and_only_documented_responses(fuzzed: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.api_url}/openapi.json")
    failures: list[str] = []
    calls: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        operations += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,  # the same requests every run: a failure reproduces
                database=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                calls.append(case.operation.label)
                case.call_and_validate(base_url=fuzzed.api_url, headers=AUTH, checks=CHECKS, timeout=30)

            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): no negative case exists.
                assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as e:  # every operation's findings, then fail once
                failures.append(f"{operation.label} ({mode.value}): {e}")
    assert operations >= 14
    assert len(calls) >= 250, f"only {len(calls)} requests were made"
    assert not failures, "\n\n".join(failures)


def assert_refused(response: httpx.Response, *codes: int) -> None:
    assert response.status_code in codes, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"]


HUGE = b'{"question": "' + b"x" * (2 * 1024 * 1024) + b'"}'


def test_a_huge_declared_body_is_413(api: httpx.Client) -> None:
    assert_refused(api.post("/jobs", content=HUGE, headers={"content-type": "application/json"}), 413)


def test_a_huge_streamed_body_is_413(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(HUGE), 64 * 1024):
            yield HUGE[start : start + 64 * 1024]

    # No Content-Length: counted as it arrives and cut off.
    response = api.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code < 500 and response.status_code != 202
    assert_refused(response, 413)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"question": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        b'{"items": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    ],
    ids=["deep arrays", "deep objects", "deep batch items"],
)
def test_deeply_nested_json_is_refused_cleanly(api: httpx.Client, body: bytes) -> None:
    path = "/batches" if body.startswith(b'{"items"') else "/jobs"
    assert_refused(api.post(path, content=body, headers={"content-type": "application/json"}), 400, 422)


@pytest.mark.parametrize(
    "body",
    [
        b'{"question": "\xff\xfe not utf-8"}',
        b'\xef\xbb\xbf{"question": "byte order mark"}',
        b'{"question": "hi", "temperature": NaN}',
        b'{"question": "hi", "temperature": Infinity}',
        b'{"question": "hi", "question": 5}',
        b'{"question": "nul \\u0000 inside"}',
        b"",
        b"null",
        b"[]",
        b'"just a string"',
        b'{"question": "truncated',
    ],
)
def test_malformed_or_odd_json_never_breaks_the_server(api: httpx.Client, body: bytes) -> None:
    response = api.post("/jobs", content=body, headers={"content-type": "application/json"})

    assert response.status_code < 500, response.text[:300]
    if response.status_code == 202:  # well-formed after all
        assert response.json()["status"] == "queued"


@pytest.mark.parametrize(
    "body",
    [b'{"question": "\xed\xa0\x80 a lone surrogate"}', b'{"question": "\\ud800 escaped lone surrogate"}'],
    ids=["raw", "escaped"],
)
def test_a_lone_surrogate_in_a_question_is_422(api: httpx.Client, body: bytes) -> None:
    response = api.post("/jobs", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 422, response.text[:300]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", None],
)
def test_wrong_content_types_are_4xx(api: httpx.Client, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = api.post("/jobs", content=b'{"question": "hi"}', headers=headers)

    assert 400 <= response.status_code < 500, response.text[:300]


@pytest.mark.parametrize("wait", ["-1", "-0.0001", "1e309", "inf", "-inf", "nan", "abc", "", "1" * 400, "0x10"])
def test_absurd_wait_values_are_422(api: httpx.Client, wait: str) -> None:
    response = api.post("/jobs", params={"wait": wait}, json={"question": "hi"})

    assert_refused(response, 422)


def test_a_zero_wait_answers_at_once(api: httpx.Client) -> None:
    assert api.post("/jobs", params={"wait": "0"}, json={"question": unique("no waiting")}).status_code == 202


@pytest.fixture(scope="module")
def finished_job(fuzzed: Stack) -> str:
    with httpx.Client(base_url=fuzzed.api_url, timeout=30, headers=AUTH) as client:
        job_id: str = client.post("/jobs", json={"question": unique("finished")}).json()["id"]
        assert wait_finished(client, job_id)["status"] == "succeeded"
    return job_id


# Header values must be ASCII without surrounding blanks (the client refuses others);
# the query parameter takes anything.
HEADER_IDS = ["abc", "-5", "5.0", "0x10", "1e3", "9" * 5000, "1_000", "+3", "9" * 20]
QUERY_IDS = [*HEADER_IDS, "\u0661\u0662\u0663x", "\u00b2", " ", "\x00"]


def read_stream(client: httpx.Client, url: str, **kwargs: Any) -> tuple[int, str, bytes]:
    with client.stream("GET", url, timeout=10, **kwargs) as response:
        return response.status_code, response.headers["content-type"], response.read()


@pytest.fixture(scope="module")
def finished_batch(fuzzed: Stack) -> str:
    with httpx.Client(base_url=fuzzed.api_url, timeout=30, headers=AUTH) as client:
        batch_id: str = client.post("/batches", json={"items": [{"question": unique("batch")}]}).json()["id"]
        wait_for(lambda: client.get(f"/batches/{batch_id}").json()["status"] == "completed", 60, "the batch")
    return batch_id


def stream_slots_held(fuzzed: Stack) -> int:
    with fuzzed.redis() as r:
        return sum(int(r.zcard(key)) for key in r.scan_iter(match="dj:sse:*"))


@pytest.mark.parametrize("last_event_id", HEADER_IDS)
@pytest.mark.parametrize("kind", ["jobs", "batches"])
def test_a_malformed_last_event_id_header_is_400_and_takes_no_stream_slot(
    api: httpx.Client, fuzzed: Stack, finished_job: str, finished_batch: str, kind: str, last_event_id: str
) -> None:
    url = f"/jobs/{finished_job}/events" if kind == "jobs" else f"/batches/{finished_batch}/events"

    code, _, body = read_stream(api, url, headers={"Last-Event-ID": last_event_id})

    assert code == 400, (code, body[:300])
    assert "Last-Event-ID" in json.loads(body)["detail"]
    wait_for(lambda: stream_slots_held(fuzzed) == 0, 10, "no stream slot held")


@pytest.mark.parametrize("kind", ["jobs", "batches"])
def test_a_last_event_id_byte_that_is_no_ascii_digit_is_400(
    api: httpx.Client, finished_job: str, finished_batch: str, kind: str
) -> None:
    """Regression: `"\xb2".isdigit()` is true (superscript two), and the batch stream took it for a number: 500."""
    url = f"/jobs/{finished_job}/events" if kind == "jobs" else f"/batches/{finished_batch}/events"
    for raw in (b"\xb2", b"\xff\xfe", b"1\xb2"):
        code, _, body = read_stream(api, url, headers=[(b"Last-Event-ID", raw)])
        assert code == 400, (raw, code, body[:300])


@pytest.mark.parametrize("last_event_id", QUERY_IDS)
def test_a_malformed_last_event_id_query_is_400(api: httpx.Client, finished_job: str, last_event_id: str) -> None:
    code, _, body = read_stream(api, f"/jobs/{finished_job}/events", params={"last_event_id": last_event_id})

    assert code == 400, (code, body[:300])


def test_a_last_event_id_past_the_end_of_a_finished_job_is_an_empty_stream(
    api: httpx.Client, finished_job: str
) -> None:
    response = api.get(f"/jobs/{finished_job}/events", headers={"Last-Event-ID": "9" * 19}, timeout=10)

    assert response.status_code == 200 and response.text.strip() == ""


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/%00",
        "/jobs/" + "a" * 10_000,
        "/jobs/..%2F..%2Fetc%2Fpasswd",
        "/jobs/%ff%fe",
        "/jobs/{}",
        "/jobs/*",
        "/batches/%00/results",
        "/batches/x/results?cursor=-1",
        "/batches/x/results?limit=0",
        "/batches/x/results?cursor=100000000000000000000000000000",
        "/jobs/x/events?last_event_id=%00",
    ],
)
def test_junk_in_paths_and_queries_is_4xx(api: httpx.Client, path: str) -> None:
    response = api.get(path, timeout=10)

    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert_error_shape(response)


def assert_error_shape(response: httpx.Response) -> None:
    """Every error answers `{"message": <one line>, "detail": ...}`, whoever produced it."""
    body = response.json()
    assert isinstance(body.get("message"), str) and body["message"], body
    assert "detail" in body, body


def test_every_kind_of_error_answers_with_a_message(api: httpx.Client) -> None:
    responses = [
        api.get("/nowhere"),
        api.put("/jobs", json={}),
        api.post("/jobs", files={"upload": ("a.txt", b"hello")}),
        api.post("/jobs", content=b"\xff\xfe", headers={"content-type": "application/json"}),
        api.post("/jobs", content=b"{}", headers={"content-type": "text/plain"}),
        api.post("/jobs", content=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/json"}),
        api.post("/jobs/" + "f" * 32 + "/cancel"),
    ]

    assert sorted({r.status_code for r in responses}) == [404, 405, 413, 422], [r.status_code for r in responses]
    for response in responses:
        assert_error_shape(response)


def test_junk_headers_are_4xx(api: httpx.Client) -> None:
    long_key = api.post("/jobs", json={"question": "hi"}, headers={"Idempotency-Key": "k" * 300})
    latin1 = api.post("/jobs", json={"question": "hi"}, headers=[(b"Idempotency-Key", "caf\xe9".encode("latin-1"))])
    odd_auth = httpx.post(
        f"{api.base_url}/jobs", json={"question": "hi"}, headers=[(b"Authorization", b"Bearer \xff\xfe")]
    )

    assert long_key.status_code == 422
    assert latin1.status_code < 500
    assert odd_auth.status_code == 401


# Every header a route reads, and some it should not care about.
FUZZED_HEADERS = [
    b"Last-Event-ID",
    b"Idempotency-Key",
    b"Authorization",
    b"X-API-Key",
    b"Content-Type",
    b"Accept",
    b"Accept-Encoding",
    b"Cookie",
    b"Origin",
    b"X-Forwarded-For",
    b"Range",
    b"If-None-Match",
]
# What a header value can hold on the wire (RFC 9110 field-value, as h11 enforces it): visible ASCII,
# obs-text (0x80-0xFF) and inner blanks; no control character, no blank at either end.
_CONTROLS = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])


def _on_the_wire(value: bytes) -> bytes:
    return value.translate(None, _CONTROLS).strip(b" \t")


HEADER_VALUES = (
    st.binary(max_size=300)
    | st.sampled_from(
        [b"9" * 5000, b"\xb2", b"Bearer", b"Bearer \xff", b"Basic Zm9vOmJhcg==", b"text/plain; charset=latin-1", b"-1"]
    )
).map(_on_the_wire)


def test_fuzzed_headers_never_get_a_5xx(fuzzed: Stack, finished_job: str, finished_batch: str) -> None:
    requests: list[tuple[str, str, bytes | None]] = [
        ("POST", "/jobs", b'{"question": "header fuzz", "expires_after_s": 0.001}'),
        ("POST", "/batches", b'{"items": [{"question": "header fuzz"}], "expires_after_s": 0.001}'),
        ("POST", "/programs/qa/batches", b'{"items": [{"input": {"question": "fuzz"}}], "expires_after_s": 0.001}'),
        ("GET", f"/jobs/{finished_job}", None),
        ("GET", f"/jobs/{finished_job}/events", None),
        ("GET", f"/batches/{finished_batch}/events", None),
        ("GET", f"/batches/{finished_batch}/results", None),
        ("POST", f"/jobs/{finished_job}/cancel", None),
        ("GET", "/programs", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", b'{"model": "qa", "messages": [{"role": "user", "content": "hi"}]}'),
    ]
    seen: list[int] = []

    @settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(
        request=st.sampled_from(requests),
        headers=st.lists(st.tuples(st.sampled_from(FUZZED_HEADERS), HEADER_VALUES), max_size=4),
        authorized=st.booleans(),
    )
    def send(request: tuple[str, str, bytes | None], headers: list[tuple[bytes, bytes]], authorized: bool) -> None:
        method, path, body = request
        sent = [(b"Authorization", f"Bearer {KEY}".encode())] if authorized else []
        if body is not None and not any(name == b"Content-Type" for name, _ in headers):
            sent.append((b"Content-Type", b"application/json"))
        with (
            httpx.Client(base_url=fuzzed.api_url, timeout=30) as client,
            client.stream(method, path, content=body, headers=sent + headers) as response,
        ):
            response.read()
            seen.append(response.status_code)
            assert response.status_code < 500, (method, path, headers, response.status_code, response.text[:300])

    send()
    assert len(seen) == 300
    wait_for(lambda: stream_slots_held(fuzzed) == 0, 10, "every stream's slot back")
