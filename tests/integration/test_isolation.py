"""The tenancy matrix: two API keys x (no user, "u1", "u2") = six identities, both path prefixes.

Identity A/u1 owns a finished batch (with output and error files) and a batch still running.
Every other identity must see each of them exactly as it sees an id that was never issued:
404 with the same error ``type``/``code``/``param`` (and the same message, up to the id),
never 403 and never 200; list endpoints must not include them; DELETE and cancel must change
nothing. The owner itself can do all of it.

The tests of this module share one stack and run in file order: the checks that the owner's
resources survived, and the owner's own cancel and delete, come after the matrix.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from batchq.local.stack import Stack
from tests.integration.conftest import start_stack
from tests.integration.helpers import CHAT, TERMINAL, chat_row, jsonl

pytestmark = pytest.mark.integration

KEY_A = "sk-isolation-tenant-a"
KEY_B = "sk-isolation-tenant-b"
PREFIXES = ("/v1", "/api/v1/llm")
BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")


@dataclass(frozen=True)
class Identity:
    key: str
    user: str | None

    @property
    def label(self) -> str:
        tenant = "A" if self.key == KEY_A else "B"
        return f"{tenant}/{self.user or '-'}"

    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}"}
        if self.user is not None:
            headers["X-On-Behalf-Of"] = self.user
        return headers


IDENTITIES = [Identity(key, user) for key in (KEY_A, KEY_B) for user in (None, "u1", "u2")]
OWNER = Identity(KEY_A, "u1")
OTHERS = [identity for identity in IDENTITIES if identity != OWNER]


@dataclass(frozen=True)
class Owned:
    """What OWNER created, as the owner saw it right after creation."""

    done: dict[str, Any]  # a completed batch with output and error files
    running: dict[str, Any]  # a batch still in progress for the whole matrix
    files: dict[str, dict[str, Any]]  # role (input, output, error, running_input) -> file object
    contents: dict[str, bytes]  # role -> file bytes

    def batch(self, role: str) -> dict[str, Any]:
        return self.done if role == "done" else self.running


@dataclass(frozen=True)
class Probe:
    """One endpoint applied to one of the owner's resources."""

    name: str
    method: str
    template: str  # with "{id}"
    kind: str  # "batch" | "file": what an unknown id of the same kind looks like
    role: str  # which of the owner's resources

    def id_in(self, owned: Owned) -> str:
        if self.kind == "batch":
            return str(owned.batch(self.role)["id"])
        return str(owned.files[self.role]["id"])


PROBES = [
    *(Probe(f"get_batch[{r}]", "GET", "/batches/{id}", "batch", r) for r in ("done", "running")),
    *(Probe(f"cancel_batch[{r}]", "POST", "/batches/{id}/cancel", "batch", r) for r in ("done", "running")),
    *(Probe(f"get_file[{r}]", "GET", "/files/{id}", "file", r) for r in ("input", "output", "error")),
    *(Probe(f"file_content[{r}]", "GET", "/files/{id}/content", "file", r) for r in ("input", "output", "error")),
    *(Probe(f"delete_file[{r}]", "DELETE", "/files/{id}", "file", r) for r in ("input", "output", "error")),
]
LIST_QUERIES: dict[str, list[dict[str, str]]] = {
    "/batches": [{}, {"limit": "100"}],
    "/files": [{}, {"limit": "10000"}, {"order": "asc"}, {"purpose": "batch"}, {"purpose": "batch_output"}],
}


# --- the stack and the owner's resources -----------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: the session stack accepts a single key."""
    running = start_stack(
        tmp_path_factory.mktemp("isolation"), {"BATCHQ_API_KEYS": f"{KEY_A},{KEY_B}"}, workers=1, concurrency=8
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(tenants: Stack) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=tenants.api_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def owned(http: httpx2.Client) -> Owned:
    done_rows = [chat_row(f"ok{i}", f"hello {i}") for i in range(3)] + [chat_row("bad", status=400)]
    running_rows = [chat_row(f"slow{i}", f"slow {i}", latency_ms=3000) for i in range(160)]  # ~60 s on 8 threads
    input_file = upload(http, OWNER, jsonl(done_rows))
    done = wait_for(http, OWNER, create_batch(http, OWNER, input_file["id"])["id"], TERMINAL)
    assert done["status"] == "completed", done
    assert done["output_file_id"] and done["error_file_id"], "the done batch must have both result files"
    running_input = upload(http, OWNER, jsonl(running_rows))
    running = wait_for(http, OWNER, create_batch(http, OWNER, running_input["id"])["id"], {"in_progress"})
    files = {"input": input_file, "running_input": running_input}
    files |= {"output": get_file(http, done["output_file_id"]), "error": get_file(http, done["error_file_id"])}
    contents = {role: content(http, obj["id"]) for role, obj in files.items()}
    return Owned(done=done, running=running, files=files, contents=contents)


def upload(http: httpx2.Client, who: Identity, data: bytes) -> dict[str, Any]:
    response = http.post(
        "/v1/files",
        headers=who.headers(),
        files={"file": ("input.jsonl", data, "application/jsonl")},
        data={"purpose": "batch"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def create_batch(http: httpx2.Client, who: Identity, input_file_id: str) -> dict[str, Any]:
    body = {"input_file_id": input_file_id, "endpoint": CHAT, "completion_window": "24h"}
    response = http.post("/v1/batches", headers=who.headers(), json=body)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def wait_for(http: httpx2.Client, who: Identity, batch_id: str, until: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(f"/v1/batches/{batch_id}", headers=who.headers())
        assert response.status_code == 200, response.text
        batch: dict[str, Any] = response.json()
        if batch["status"] in until:
            return batch
        assert time.monotonic() < deadline, f"{batch_id} still {batch['status']} after {timeout}s"
        time.sleep(0.1)


def get_file(http: httpx2.Client, file_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/files/{file_id}", headers=OWNER.headers())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def content(http: httpx2.Client, file_id: str) -> bytes:
    response = http.get(f"/v1/files/{file_id}/content", headers=OWNER.headers())
    assert response.status_code == 200, response.text
    return response.content


def unknown_id(kind: str) -> str:
    return ("batch_" if kind == "batch" else "file-") + secrets.token_hex(16)


def error_of(response: httpx2.Response) -> dict[str, Any]:
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error: dict[str, Any] = body["error"]
    return error


def list_ids(http: httpx2.Client, who: Identity, path: str, query: dict[str, str]) -> list[str]:
    """Every id on every page of a list endpoint (following ``after``)."""
    ids: list[str] = []
    params = dict(query)
    for _ in range(1000):
        response = http.get(path, headers=who.headers(), params=params)
        assert response.status_code == 200, f"{who.label} GET {path} {query}: {response.status_code} {response.text}"
        page = response.json()
        assert page["object"] == "list"
        ids += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            return ids
        params["after"] = page["last_id"]
    raise AssertionError(f"{path} never stopped paging")


def owner_ids(owned: Owned) -> dict[str, set[str]]:
    return {
        "/batches": {owned.done["id"], owned.running["id"]},
        "/files": {obj["id"] for obj in owned.files.values()},
    }


# --- the matrix: every other identity, every endpoint, both prefixes ------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
@pytest.mark.parametrize("who", OTHERS, ids=lambda i: i.label)
def test_foreign_resource_answers_exactly_like_an_unknown_id(
    http: httpx2.Client, owned: Owned, who: Identity, probe: Probe, prefix: str
) -> None:
    foreign = probe.id_in(owned)
    unknown = unknown_id(probe.kind)
    where = f"{who.label} {probe.method} {prefix}{probe.template.format(id='<id>')} ({probe.name} of A/u1)"

    theirs = http.request(probe.method, prefix + probe.template.format(id=foreign), headers=who.headers())
    baseline = http.request(probe.method, prefix + probe.template.format(id=unknown), headers=who.headers())

    assert baseline.status_code == 404, f"{where}: an unknown id answered {baseline.status_code} {baseline.text}"
    assert theirs.status_code != 403, f"{where}: 403 reveals that the resource exists: {theirs.text}"
    assert theirs.status_code == 404, f"{where}: expected 404, got {theirs.status_code} {theirs.text}"
    got, expected = error_of(theirs), error_of(baseline)
    for field in ("type", "code", "param"):
        assert got[field] == expected[field], f"{where}: error.{field} {got[field]!r} != {expected[field]!r}"
    assert got["message"].replace(foreign, "<id>") == expected["message"].replace(unknown, "<id>"), where


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("resource", ["/batches", "/files"])
@pytest.mark.parametrize("who", OTHERS, ids=lambda i: i.label)
def test_foreign_resources_are_not_listed(
    http: httpx2.Client, owned: Owned, who: Identity, resource: str, prefix: str
) -> None:
    hidden = owner_ids(owned)[resource]
    for query in LIST_QUERIES[resource]:
        leaked = hidden & set(list_ids(http, who, prefix + resource, query))
        assert not leaked, f"{who.label} GET {prefix}{resource} {query} lists A/u1's {sorted(leaked)}"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("who", OTHERS, ids=lambda i: i.label)
def test_foreign_ids_are_useless_as_list_cursors(http: httpx2.Client, owned: Owned, who: Identity, prefix: str) -> None:
    """``after=<someone else's id>`` must behave like an unknown cursor (an empty page), not leak a position."""
    for resource, ids in owner_ids(owned).items():
        kind = "batch" if resource == "/batches" else "file"
        for foreign in sorted(ids):
            theirs = http.get(prefix + resource, headers=who.headers(), params={"after": foreign})
            baseline = http.get(prefix + resource, headers=who.headers(), params={"after": unknown_id(kind)})
            where = f"{who.label} GET {prefix}{resource}?after=<A/u1's id>"
            assert theirs.status_code == baseline.status_code, f"{where}: {theirs.status_code} {theirs.text}"
            assert theirs.json() == baseline.json(), where


@pytest.mark.parametrize("who", OTHERS, ids=lambda i: i.label)
def test_foreign_input_file_cannot_start_a_batch(http: httpx2.Client, owned: Owned, who: Identity) -> None:
    foreign = owned.files["input"]["id"]
    unknown = unknown_id("file")
    bodies = [
        {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"} for file_id in (foreign, unknown)
    ]
    theirs, baseline = (http.post("/v1/batches", headers=who.headers(), json=body) for body in bodies)
    assert baseline.status_code == 404, baseline.text
    assert theirs.status_code == 404, f"{who.label} created a batch from A/u1's file: {theirs.text}"
    got, expected = error_of(theirs), error_of(baseline)
    assert (got["type"], got["code"], got["param"]) == (expected["type"], expected["code"], expected["param"])
    assert got["message"].replace(foreign, "<id>") == expected["message"].replace(unknown, "<id>")


# --- the owner ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_owner_sees_and_reads_everything(http: httpx2.Client, owned: Owned, prefix: str) -> None:
    for role in ("done", "running"):
        response = http.get(f"{prefix}/batches/{owned.batch(role)['id']}", headers=OWNER.headers())
        assert response.status_code == 200, response.text
        assert response.json()["id"] == owned.batch(role)["id"]
    for role, obj in owned.files.items():
        meta = http.get(f"{prefix}/files/{obj['id']}", headers=OWNER.headers())
        assert meta.status_code == 200 and meta.json() == obj, meta.text
        body = http.get(f"{prefix}/files/{obj['id']}/content", headers=OWNER.headers())
        assert body.status_code == 200 and body.content == owned.contents[role], role
    for resource in LIST_QUERIES:
        for query in LIST_QUERIES[resource]:
            expected = expected_in_list(owned, resource, query)
            listed = set(list_ids(http, OWNER, prefix + resource, query))
            assert expected <= listed, f"GET {prefix}{resource} {query} misses {sorted(expected - listed)}"


def expected_in_list(owned: Owned, resource: str, query: dict[str, str]) -> set[str]:
    if resource == "/batches":
        return owner_ids(owned)[resource]
    return {obj["id"] for obj in owned.files.values() if query.get("purpose", obj["purpose"]) == obj["purpose"]}


def test_ids_are_prefixed_random_hex(http: httpx2.Client, owned: Owned) -> None:
    batch_ids = [owned.done["id"], owned.running["id"]]
    file_ids = [obj["id"] for obj in owned.files.values()]
    file_ids += [upload(http, OWNER, jsonl([chat_row("x")]))["id"] for _ in range(6)]
    assert all(BATCH_ID.match(i) for i in batch_ids), batch_ids
    assert all(FILE_ID.match(i) for i in file_ids), file_ids
    hexes = [i.removeprefix("batch_") for i in batch_ids] + [i.removeprefix("file-") for i in file_ids]
    assert len(set(hexes)) == len(hexes), "ids repeat"
    # 128 random bits: two of a handful of ids sharing their first 8 hex digits would be a 1-in-2**32 fluke,
    # but it is what a counter, a timestamp or a hash of predictable input would produce.
    assert len({h[:8] for h in hexes}) == len(hexes), f"ids look sequential or time-based: {hexes}"
    assert len({h[-8:] for h in hexes}) == len(hexes), f"ids look sequential or time-based: {hexes}"


def test_the_matrix_changed_nothing(http: httpx2.Client, owned: Owned) -> None:
    """After every other identity tried DELETE and cancel, everything is still there, unchanged."""
    for role, obj in owned.files.items():
        assert get_file(http, obj["id"]) == obj, f"{role} file metadata changed"
        assert content(http, obj["id"]) == owned.contents[role], f"{role} file content changed"
    done = http.get(f"/v1/batches/{owned.done['id']}", headers=OWNER.headers()).json()
    assert done == owned.done, "the finished batch changed"
    running = http.get(f"/v1/batches/{owned.running['id']}", headers=OWNER.headers()).json()
    assert running["status"] in ("in_progress", "finalizing", "completed"), running
    assert running["cancelling_at"] is None and running["cancelled_at"] is None, running
    for resource, ids in owner_ids(owned).items():
        assert ids <= set(list_ids(http, OWNER, "/v1" + resource, {})), resource


def test_owner_can_cancel_and_delete(http: httpx2.Client, owned: Owned) -> None:
    """Last: the owner's own cancel and delete work (and the deleted files then look unknown)."""
    cancelled = http.post(f"/api/v1/llm/batches/{owned.running['id']}/cancel", headers=OWNER.headers())
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelling", "the running batch should still be running here"
    finished = http.post(f"/v1/batches/{owned.done['id']}/cancel", headers=OWNER.headers())
    assert finished.status_code == 409, finished.text
    assert error_of(finished)["code"] == "invalid_state"
    batch = wait_for(http, OWNER, owned.running["id"], TERMINAL, timeout=30)
    assert batch["status"] == "cancelled", batch
    for prefix, role in zip(PREFIXES * 2, ("input", "output", "error", "running_input"), strict=True):
        file_id = owned.files[role]["id"]
        deleted = http.delete(f"{prefix}/files/{file_id}", headers=OWNER.headers())
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
        gone = http.get(f"{prefix}/files/{file_id}", headers=OWNER.headers())
        assert gone.status_code == 404 and error_of(gone)["code"] == "not_found", gone.text
        again = http.delete(f"{prefix}/files/{file_id}", headers=OWNER.headers())
        assert again.status_code == 404, again.text
