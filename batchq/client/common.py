"""What ``Client`` and ``AsyncClient`` share: every decision (when to try a create again, how long
to poll, how a results page is read, which lines a retry sends) and every request's shape. The two
clients only do the I/O, one blocking and one awaited.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias

import httpx2
import orjson

from batchq.client.errors import APIError, ClientError, transient_status
from batchq.domain import resubmit
from batchq.domain.limits import Limits
from batchq.domain.models import Batch, Page
from batchq.domain.status import Status, is_terminal

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
MAX_POLL_FAILURES = 5  # consecutive transient failures ``wait`` rides out before giving up
IDEMPOTENCY_HEADER = "Idempotency-Key"
IN_PROGRESS_CODE = "idempotency_request_in_progress"  # 409: the first try with this key still runs
CREATE_ATTEMPTS = 4  # tries of one create (same key each time)
CREATE_BACKOFF_S = 0.5  # first pause between them; doubles, at most MAX_BACKOFF_S
MAX_BACKOFF_S = 30.0
Row: TypeAlias = Mapping[str, Any]
Rows: TypeAlias = Iterable[Row] | str | os.PathLike[str]
Progress: TypeAlias = Callable[[Batch], None]


def new_idempotency_key() -> str:
    """A fresh key for one logical create."""
    return str(uuid.uuid4())


def key_for(given: str | None, part: str | None = None) -> str:
    """``given`` (with ``-part`` when one call makes several creates), or a fresh key."""
    if given is None:
        return new_idempotency_key()
    return f"{given}-{part}" if part else given


def multipart_headers(key: str) -> dict[str, str]:
    """A boundary derived from the key: every try of one upload sends the very same bytes."""
    boundary = "batchq-" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def create_backoff(attempt: int, base_s: float, retry_after: str | None = None) -> float:
    """Seconds before try ``attempt + 1`` of a create: ``Retry-After`` when given, else doubling."""
    if retry_after is not None:
        try:
            return min(MAX_BACKOFF_S, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return min(MAX_BACKOFF_S, base_s * 2.0 ** (attempt - 1))


class CreateTries:
    """The retry decision of one create: which failures are worth another try, and how long to wait."""

    def __init__(self, attempts: int, base_s: float) -> None:
        self.attempts, self.base_s, self.attempt = attempts, base_s, 0

    def pause_after(self, outcome: httpx2.Response | httpx2.TransportError) -> float | None:
        """Seconds to wait before trying again, or None: the outcome is final (raise or return it)."""
        self.attempt += 1
        if self.attempt >= self.attempts:
            return None
        if isinstance(outcome, httpx2.TransportError):
            return create_backoff(self.attempt, self.base_s)
        if not (transient_status(outcome.status_code) or still_running(outcome)):
            return None
        return create_backoff(self.attempt, self.base_s, outcome.headers.get("retry-after"))


def still_running(response: httpx2.Response) -> bool:
    """409 ``idempotency_request_in_progress``: the first try with this key is still being served."""
    return response.status_code == 409 and APIError.from_response(response).code == IN_PROGRESS_CODE


def api_base(api_url: str | None) -> str:
    """``http://host:8000`` → ``http://host:8000/v1``; a URL with a path (``.../v1``, ``.../api/v1/llm``) is kept."""
    url = (api_url or os.environ.get("BATCHQ_API_URL") or DEFAULT_API_URL).rstrip("/")
    return url if httpx2.URL(url).path not in ("", "/") else url + "/v1"


def auth_headers(api_key: str | None, on_behalf_of: str | None) -> dict[str, str]:
    key = api_key or os.environ.get("BATCHQ_API_KEY")
    if not key:
        raise ClientError("No API key: pass api_key= (--api-key) or set BATCHQ_API_KEY.")
    headers = {"Authorization": f"Bearer {key}"}
    user = on_behalf_of or os.environ.get("BATCHQ_ON_BEHALF_OF")
    if user:
        headers["X-On-Behalf-Of"] = user
    return headers


def create_body(
    input_file_id: str, endpoint: str, window: str, metadata: Mapping[str, str] | None, output_ttl_s: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": window}
    if metadata:
        body["metadata"] = dict(metadata)
    if output_ttl_s is not None:
        body["output_expires_after"] = {"anchor": "created_at", "seconds": output_ttl_s}
    return body


def upload_fields(purpose: str, ttl_s: int | None) -> dict[str, str]:
    fields = {"purpose": purpose}
    if ttl_s is not None:
        fields |= {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(ttl_s)}
    return fields


def query_params(**values: object) -> dict[str, str | int]:
    return {name: value for name, value in values.items() if isinstance(value, str | int)}


@contextmanager
def opened(rows: Rows) -> Iterator[IO[bytes]]:
    """The input as a readable file: a path is opened; rows are written to a temporary JSONL file."""
    if isinstance(rows, str | os.PathLike):
        with open(rows, "rb") as source:
            yield source
        return
    with tempfile.TemporaryFile(suffix=".jsonl") as spool:
        for row in rows:
            spool.write(orjson.dumps(row if isinstance(row, dict) else dict(row)) + b"\n")
        spool.seek(0)
        yield spool


def upload_name(rows: Rows) -> str:
    return Path(rows).name if isinstance(rows, str | os.PathLike) else "input.jsonl"


class Lines:
    """Parse JSONL from byte chunks, splitting on ``\\n`` only.

    ``Response.iter_lines`` is not used: it splits like ``str.splitlines`` (also on U+2028,
    U+0085, ...), which JSON strings may hold unescaped.
    """

    def __init__(self) -> None:
        self.pending: list[bytes] = []  # the unfinished line's chunks (a line may span many)

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        if b"\n" not in chunk:
            self.pending.append(chunk)
            return []
        first, *lines, last = chunk.split(b"\n")
        lines.insert(0, b"".join([*self.pending, first]))
        self.pending = [last]
        return [orjson.loads(line) for line in lines if line.strip()]

    def finish(self) -> list[dict[str, Any]]:
        rest = b"".join(self.pending)
        return [orjson.loads(rest)] if rest.strip() else []


def jsonl(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    lines = Lines()
    for chunk in chunks:
        yield from lines.feed(chunk)
    yield from lines.finish()


MAX_FIND_PAGES = 20
OPENAI_LIMITS = Limits(
    max_requests_per_batch=50_000,
    max_file_bytes=200 << 20,
    max_line_bytes=200 << 20,
    endpoints=[],
    min_completion_window="24h",
    max_completion_window="24h",
    max_active_batches_per_key=0,
    max_enqueued_requests_per_key=0,
    requests_per_minute_per_key=0,
    max_results_page_lines=0,
    max_results_page_bytes=0,
)


def match_input(page: Page[Batch], input_file_id: str, since: int) -> tuple[Batch | None, bool]:
    """The batch of ``page`` made from ``input_file_id``, and whether older pages can be skipped."""
    for batch in page.data:
        if batch.created_at < since:
            return None, True  # newest first: every later batch is older still
        if batch.input_file_id == input_file_id:
            return batch, True
    return None, not page.has_more


def long_poll_timeout(timeout: httpx2.Timeout, wait: float) -> httpx2.Timeout:
    """The client's timeout, with a read timeout that outlasts the server's long poll."""
    read = timeout.read
    if read is None or read > wait + 10:
        return timeout
    return httpx2.Timeout(connect=timeout.connect, read=wait + 10, write=timeout.write, pool=timeout.pool)


def result_files(batch: Batch) -> list[str]:
    return [file_id for file_id in (batch.output_file_id, batch.error_file_id) if file_id]


class Deadline:
    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def check(self, batch: Batch) -> None:
        if self.at is not None and time.monotonic() > self.at:
            counts = batch.request_counts
            raise TimeoutError(f"{batch.id} still {batch.status} ({counts.completed + counts.failed}/{counts.total})")


class Poll:
    """Counts consecutive transient failures while waiting; re-raises once there are too many."""

    def __init__(self) -> None:
        self.failures = 0

    def failed(self, error: Exception) -> None:
        transient = isinstance(error, httpx2.TransportError) or (isinstance(error, APIError) and error.transient)
        self.failures += 1
        if not transient or self.failures >= MAX_POLL_FAILURES:
            raise error

    def succeeded(self) -> None:
        self.failures = 0


RESULTS_WAIT_S = 10.0  # long poll of a follower: the server answers at the first new line or after this
CURSOR_HEADER = "x-batchq-next-cursor"
STATUS_HEADER = "x-batchq-batch-status"
MORE_HEADER = "x-batchq-has-more"


@dataclass(frozen=True)
class ResultsPage:
    """One page of ``GET /batches/{id}/results``: JSONL bytes and where the next page starts."""

    data: bytes  # result lines, each ending in a newline, as in the output and error files
    cursor: str  # pass as ``after`` to read on from here (also after a reconnect)
    status: Status  # the batch's status when the page was read
    has_more: bool  # more lines are stored already

    @property
    def ended(self) -> bool:
        """The batch has ended and this page holds its last lines: nothing will follow."""
        return is_terminal(self.status) and not self.has_more

    def lines(self) -> list[dict[str, Any]]:
        return list(jsonl([self.data]))

    @classmethod
    def from_response(cls, response: httpx2.Response) -> ResultsPage:
        headers = response.headers
        more = headers.get(MORE_HEADER) == "true"
        return cls(response.content, headers[CURSOR_HEADER], Status(headers[STATUS_HEADER]), more)


def results_params(after: str | None, limit: int, wait: float) -> dict[str, str | int | float]:
    params: dict[str, str | int | float] = {"limit": limit}
    if after:
        params["after"] = after
    if wait > 0:
        params["wait"] = wait
    return params


def next_after(page: ResultsPage, follow: bool) -> bool:
    """Whether to ask for another page after ``page``."""
    return not page.ended and (follow or page.has_more)


@contextmanager
def atomic_writer(target: Path) -> Iterator[IO[bytes]]:
    partial = target.with_name(f".{target.name}.partial")
    try:
        with open(partial, "wb") as sink:
            yield sink
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def retryable(batch: Batch) -> Batch:
    """``batch`` when its unsuccessful lines can be sent again; ``ClientError`` saying why not otherwise."""
    reason = resubmit.refusal(batch)
    if reason is not None:
        raise ClientError(reason)
    return batch
