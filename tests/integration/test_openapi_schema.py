"""Schema-driven tests: schemathesis generates requests for every operation of the live ``/openapi.json``.

``test_api_honours_its_contract`` runs every operation (both path prefixes, and ``/health``) through
schemathesis' examples, coverage and fuzzing phases (at most 20 fuzzed examples per operation), as a
tenant of its own (a valid key and a unique ``X-On-Behalf-Of``), and checks: no 5xx; status codes,
content types, headers and bodies conform to the schema; every error carries OpenAI's envelope.
Generated ids never exist and generated files are not JSONL, so positive cases of the id operations,
of ``POST /batches`` and of ``POST /files`` are replayed with real ids and a real input file too,
and their 200 bodies are validated as well. Upload operations replay on a fresh upload each (with a
real part for ``complete``), so a cancel or a complete never ends the upload another replay uses.
``test_fuzzing_reached_success`` makes sure the run was not vacuous (say, every call a 401).

``/metrics`` (Prometheus text) is not in the schema; it is excluded explicitly all the same.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from batchq.local.stack import Stack
from tests.integration.helpers import CHAT, TERMINAL, chat_row, jsonl

pytestmark = [pytest.mark.integration]

PREFIXES = ("/v1", "/api/v1/llm")
USER = f"schema-{secrets.token_hex(6)}"  # this module's own tenant: nothing else sees its resources
ERROR_STATUSES = {400, 401, 404, 409, 413, 429, 503}
ERROR_FIELDS = {"message", "type", "param", "code"}
SEED = 20240611  # reproducible runs

Check = Callable[[Any, Any, Any], bool | None]
STATUSES: defaultdict[str, Counter[int]] = defaultdict(Counter)  # operation label -> statuses seen


def auth_headers(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.api_key}", "X-On-Behalf-Of": USER}


def upload(stack: Stack, data: bytes) -> str:
    response = httpx2.post(
        stack.api_url + "/v1/files",
        headers=auth_headers(stack),
        files={"file": ("in.jsonl", data)},
        data={"purpose": "batch"},
        timeout=30.0,
    )
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def known_ids(stack: Stack) -> dict[str, str]:
    """An input file and a finished batch (with its output file) of USER."""
    input_file_id = upload(stack, jsonl([chat_row("a"), chat_row("b")]))
    with httpx2.Client(base_url=stack.api_url, headers=auth_headers(stack), timeout=30.0) as http:
        created = http.post("/v1/batches", json={"input_file_id": input_file_id, "endpoint": CHAT})
        assert created.status_code == 200, created.text
        deadline = time.monotonic() + 60
        while (batch := http.get(f"/v1/batches/{created.json()['id']}").json())["status"] not in TERMINAL:
            assert time.monotonic() < deadline, batch
            time.sleep(0.1)
    assert batch["status"] == "completed", batch
    return {"input_file_id": input_file_id, "file_id": batch["output_file_id"], "batch_id": batch["id"]}


def fresh_upload(stack: Stack) -> tuple[str, str]:
    """A pending upload of USER holding one part that makes its whole size: (upload id, part id)."""
    data = jsonl([chat_row("p")])
    with httpx2.Client(base_url=stack.api_url, headers=auth_headers(stack), timeout=30.0) as http:
        body = {"bytes": len(data), "filename": "p.jsonl", "mime_type": "application/jsonl", "purpose": "batch"}
        upload = http.post("/v1/uploads", json=body)
        assert upload.status_code == 200, upload.text
        part = http.post(f"/v1/uploads/{upload.json()['id']}/parts", files={"data": ("p", data)})
        assert part.status_code == 200, part.text
    return upload.json()["id"], part.json()["id"]


@pytest.fixture(scope="module", autouse=True)
def _drain(stack: Stack) -> Iterator[None]:
    """The fuzz run creates small batches on the shared stack: let them finish before the next module."""
    yield
    deadline = time.monotonic() + 60
    with httpx2.Client(base_url=stack.api_url, headers=auth_headers(stack), timeout=30.0) as http:
        while active := [b["id"] for b in all_batches(http) if b["status"] not in TERMINAL]:
            assert time.monotonic() < deadline, f"batches still running: {active}"
            time.sleep(0.2)


def all_batches(http: httpx2.Client) -> list[dict[str, Any]]:
    batches: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = http.get("/v1/batches", params=params).json()
        batches += page["data"]
        if not page["has_more"]:
            return batches
        params["after"] = page["last_id"]


@pytest.fixture
def api_schema(stack: Stack) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "base-url": stack.api_url,
            "headers": auth_headers(stack),  # configured headers win over the generated header parameters
            "seed": SEED,
            "generation": {"database": "none"},
        }
    )
    return schemathesis.openapi.from_url(stack.api_url + "/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/metrics")


@pytest.fixture(autouse=True)
def _legacy_nodeid(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's ``from_fixture`` reads and writes ``item._nodeid``, which pytest 9.2 no longer has
    (it keeps ``item._id``). Give the item that attribute back; only schemathesis looks at it."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# --- checks of our own ----------------------------------------------------------------------------


def openai_error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx carries ``{"error": {"message", "type", "param", "code"}}`` (405s included)."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an OpenAI error envelope: {body!r}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == ERROR_FIELDS, f"error fields {sorted(error)}"
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    return None


def tally(ctx: Any, response: Any, case: Any) -> bool | None:
    if case.method.upper() == case.operation.method.upper():
        STATUSES[case.operation.label][response.status_code] += 1
    return None


CHECKS: list[Check] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    openai_error_envelope,
    tally,
]


# --- the fuzz run ---------------------------------------------------------------------------------


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_honours_its_contract(case: schemathesis.Case[Any], stack: Stack, known_ids: dict[str, str]) -> None:
    case.call_and_validate(checks=CHECKS)
    if is_plain_positive(case) and (case.path_parameters or case.operation.path.endswith(CREATES)):
        replay_on_real_ids(case, stack, known_ids)


def is_plain_positive(case: schemathesis.Case[Any]) -> bool:
    """Valid data, sent with the operation's own method (not a negative case or a coverage probe)."""
    meta = case.meta
    positive = meta is None or meta.generation.mode == schemathesis.GenerationMode.POSITIVE
    return positive and case.method.upper() == case.operation.method.upper()


CREATES = ("/batches", "/files", "/uploads")


def on_fresh_upload(case: schemathesis.Case[Any], stack: Stack) -> dict[str, Any]:
    """Path and body for an upload operation's replay: a fresh upload, its real part for ``complete``."""
    upload_id, part_id = fresh_upload(stack)
    kwargs: dict[str, Any] = {"path_parameters": {"upload_id": upload_id}}
    if case.operation.path.endswith("/complete"):
        kwargs["body"] = {"part_ids": [part_id]}
    elif case.operation.path.endswith("/parts"):
        kwargs["body"] = {"data": b"x"}  # room for one more part: its size plus one part
    return kwargs


def replay_query(case: schemathesis.Case[Any]) -> Any:
    """The case's query, without a made-up results cursor (refused with a 400): read from the start."""
    if case.operation.path.endswith("/results") and case.query:
        return {name: value for name, value in case.query.items() if name != "after"}
    return case.query


def replay_on_real_ids(case: schemathesis.Case[Any], stack: Stack, known_ids: dict[str, str]) -> None:
    """The same request with ids that exist (DELETE gets a fresh file of its own, uploads a fresh upload)."""
    method = case.operation.method.upper()
    kwargs: dict[str, Any] = {"query": replay_query(case), "headers": auth_headers(stack)}
    if "upload_id" in case.path_parameters:
        kwargs |= on_fresh_upload(case, stack)
    elif case.path_parameters:
        kwargs["path_parameters"] = {name: known_ids[name] for name in case.path_parameters}
        if method == "DELETE":
            kwargs["path_parameters"]["file_id"] = upload(stack, jsonl([chat_row("d")]))
    elif method == "POST" and isinstance(case.body, dict) and case.operation.path.endswith("/files"):
        kwargs["body"] = case.body | {"file": jsonl([chat_row("u")]), "purpose": "batch"}  # a real JSONL file
    elif method == "POST" and isinstance(case.body, dict) and case.operation.path.endswith("/uploads"):
        real = {"bytes": 10, "filename": "u.jsonl", "mime_type": "application/jsonl", "purpose": "batch"}
        kwargs["body"] = case.body | real
    elif method == "POST" and isinstance(case.body, dict):  # POST /batches: a real input file, a known endpoint
        kwargs["body"] = case.body | {"input_file_id": known_ids["input_file_id"], "endpoint": CHAT}
    else:
        return
    replay = case.operation.Case(**kwargs)
    response = replay.call_and_validate(checks=CHECKS)
    if case.path_parameters or case.operation.path.endswith(("/files", "/uploads")):
        batch_cancel = case.operation.path.endswith("/batches/{batch_id}/cancel")
        expected = 409 if batch_cancel else 200  # the known batch has completed
        assert response.status_code == expected, f"{method} {replay.formatted_path}: {response.text}"


def test_fuzzing_reached_success() -> None:
    """Every operation answered 2xx at least once (batch cancel: 409 on the finished batch) -- not just errors."""
    if not STATUSES:
        pytest.skip("runs after test_api_honours_its_contract")
    assert len(STATUSES) >= 27, sorted(STATUSES)  # 13 operations under each prefix, and /health
    for label, seen in sorted(STATUSES.items()):
        success = {409} if label.endswith("/batches/{batch_id}/cancel") else set(range(200, 300))
        assert success & set(seen), f"{label} only answered {dict(seen)}"


# --- status codes: one deterministic error request per operation ----------------------------------


def unknown(kind: str) -> str:
    return {"batch": "batch_", "file": "file-", "upload": "upload_"}[kind] + secrets.token_hex(16)


@dataclass(frozen=True)
class ErrorRequest:
    """A request that answers one of the API's error statuses."""

    method: str
    path: str
    status: int
    path_parameters: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    authenticated: bool = True

    @property
    def label(self) -> str:
        return f"{self.status} {self.method} {self.path}"


ERROR_REQUESTS = [
    ErrorRequest("POST", "/files", 400),  # no multipart body
    ErrorRequest("GET", "/files", 401, authenticated=False),
    ErrorRequest("GET", "/files", 400, query={"limit": 0}),
    ErrorRequest("GET", "/batches", 400, query={"limit": 101}),
    ErrorRequest("GET", "/files/{file_id}", 404, {"file_id": unknown("file")}),
    ErrorRequest("DELETE", "/files/{file_id}", 404, {"file_id": unknown("file")}),
    ErrorRequest("GET", "/files/{file_id}/content", 404, {"file_id": unknown("file")}),
    ErrorRequest("POST", "/batches", 400, body={"input_file_id": unknown("file"), "endpoint": "/nope"}),
    ErrorRequest("POST", "/batches", 404, body={"input_file_id": unknown("file"), "endpoint": CHAT}),
    ErrorRequest("GET", "/batches", 401, authenticated=False),
    ErrorRequest("GET", "/batches/{batch_id}", 404, {"batch_id": unknown("batch")}),
    ErrorRequest("POST", "/batches/{batch_id}/cancel", 404, {"batch_id": unknown("batch")}),
    ErrorRequest("POST", "/uploads", 400, body={"bytes": "1", "filename": "a", "mime_type": "a/b", "purpose": "x"}),
    ErrorRequest("POST", "/uploads/{upload_id}/parts", 404, {"upload_id": unknown("upload")}),
    ErrorRequest("POST", "/uploads/{upload_id}/complete", 404, {"upload_id": unknown("upload")}, body={"part_ids": []}),
    ErrorRequest("POST", "/uploads/{upload_id}/cancel", 404, {"upload_id": unknown("upload")}),
    ErrorRequest("GET", "/batches/{batch_id}/results", 404, {"batch_id": unknown("batch")}),
    ErrorRequest("GET", "/batches/{batch_id}/results", 400, {"batch_id": unknown("batch")}, {"after": "x"}),
    ErrorRequest("GET", "/batches/limits", 401, authenticated=False),
]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("request_", ERROR_REQUESTS, ids=lambda r: r.label)
def test_error_responses_are_documented(stack: Stack, request_: ErrorRequest, prefix: str) -> None:
    """Each error status the API sends is in the schema, with the error envelope as its body."""
    operation = schemathesis.openapi.from_url(stack.api_url + "/openapi.json")[prefix + request_.path][request_.method]
    kwargs: dict[str, Any] = {"body": request_.body} if request_.body is not None else {}
    headers = auth_headers(stack) if request_.authenticated else {}
    case = operation.Case(path_parameters=request_.path_parameters, query=request_.query, headers=headers, **kwargs)
    response = case.call(base_url=stack.api_url)
    assert response.status_code == request_.status, response.text
    checks: list[Check] = [status_code_conformance, response_schema_conformance, openai_error_envelope]
    case.validate_response(response, checks=checks)


# --- the rest of the document ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(stack: Stack) -> dict[str, Any]:
    document: dict[str, Any] = httpx2.get(stack.api_url + "/openapi.json", timeout=10).json()
    return document


def operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in openapi["paths"].items() for method, op in item.items()]


def test_document_covers_both_prefixes_and_not_metrics(openapi: dict[str, Any]) -> None:
    paths = set(openapi["paths"])
    assert "/metrics" not in paths
    for prefix in PREFIXES:
        for path in ("/files", "/files/{file_id}", "/files/{file_id}/content", "/batches", "/batches/{batch_id}"):
            assert prefix + path in paths
        assert prefix + "/batches/{batch_id}/cancel" in paths
        for path in ("/uploads", "/uploads/{upload_id}/parts", "/uploads/{upload_id}/complete"):
            assert prefix + path in paths
        assert prefix + "/uploads/{upload_id}/cancel" in paths


@pytest.mark.parametrize("prefix", PREFIXES)
def test_upload_declares_its_multipart_body(openapi: dict[str, Any], prefix: str) -> None:
    body = openapi["paths"][f"{prefix}/files"]["post"].get("requestBody")
    assert body is not None, "no requestBody"
    form = body["content"]["multipart/form-data"]["schema"]
    assert {"file", "purpose"} <= set(form.get("properties", {}))


def test_no_phantom_422(openapi: dict[str, Any]) -> None:
    documenting = [f"{method} {path}" for method, path, op in operations(openapi) if "422" in op["responses"]]
    assert not documenting, f"422 documented but never sent by: {documenting}"


def test_auth_is_a_security_scheme(openapi: dict[str, Any]) -> None:
    schemes = openapi.get("components", {}).get("securitySchemes", {})
    assert any(s.get("type") == "http" and s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    header_params = {
        p["name"].lower() for _, _, op in operations(openapi) for p in op.get("parameters", []) if p["in"] == "header"
    }
    assert "authorization" not in header_params
