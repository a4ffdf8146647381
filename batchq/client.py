"""A small typed client for batchq (or any OpenAI-compatible Batch API), sync and async.

::

    from batchq.client import Client

    with Client() as client:  # BATCHQ_API_URL, BATCHQ_API_KEY (and BATCHQ_ON_BEHALF_OF)
        batch = client.submit(rows, endpoint="/v1/chat/completions")
        batch = client.wait(batch.id)
        for line in client.results(batch):  # output lines, then error lines
            print(line["custom_id"], line["response"] or line["error"])

Uploads stream from disk (rows are written to a temporary JSONL file first) and downloads stream
to disk or line by line, so no file is ever held whole in memory. Every non-2xx answer raises
``APIError`` with the fields of the OpenAI error envelope.

Every create (a file upload, a batch) carries an ``Idempotency-Key`` header: a fresh uuid4 per
call unless the caller passes ``idempotency_key=``. A create that fails on the way (connection
error, timeout, 408, 429, 5xx, or 409 ``idempotency_request_in_progress`` while the first try
still runs) is sent again up to ``create_attempts`` times with the same key,
so a server that honours the header answers the retry with the first create's object instead of
creating a second one.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import httpx2
import orjson
from pydantic import BaseModel

from batchq.domain.limits import Limits
from batchq.domain.models import Batch, DeletedFile, FileObject, Page
from batchq.domain.status import Status, is_terminal

if TYPE_CHECKING:
    from batchq.bulk import BulkProgress, BulkResult

__all__ = [
    "DEFAULT_API_URL",
    "APIError",
    "AsyncClient",
    "Batch",
    "Client",
    "ClientError",
    "FileObject",
    "Page",
    "ResultsPage",
]

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
MAX_METADATA_PAIRS = 16  # the OpenAI Batch API's limit
MAX_POLL_FAILURES = 5  # consecutive transient failures ``wait`` rides out before giving up
IDEMPOTENCY_HEADER = "Idempotency-Key"
IN_PROGRESS_CODE = "idempotency_request_in_progress"  # 409: the first try with this key still runs
CREATE_ATTEMPTS = 4  # tries of one create (same key each time)
CREATE_BACKOFF_S = 0.5  # first pause between them; doubles, at most MAX_BACKOFF_S
MAX_BACKOFF_S = 30.0
Row: TypeAlias = Mapping[str, Any]
Rows: TypeAlias = Iterable[Row] | str | os.PathLike[str]
Progress: TypeAlias = Callable[[Batch], None]


class ClientError(Exception):
    """Anything the client itself refuses (e.g. no API key); the base of ``APIError``."""


class APIError(ClientError):
    """A non-2xx answer; carries the HTTP status and the OpenAI error envelope's fields."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code or 'error'}: {message}")
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    @classmethod
    def from_response(cls, response: httpx2.Response) -> APIError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["message"]), **_envelope_fields(error))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, response.text[:500] or response.reason_phrase)

    @property
    def transient(self) -> bool:
        return _transient_status(self.status_code)


def _envelope_fields(error: dict[str, Any]) -> dict[str, str | None]:
    return {name: None if error.get(name) is None else str(error[name]) for name in ("type", "param", "code")}


def _raise_for_status(response: httpx2.Response) -> None:
    if response.is_error:
        raise APIError.from_response(response)


def new_idempotency_key() -> str:
    """A fresh key for one logical create."""
    return str(uuid.uuid4())


def _key_for(given: str | None, part: str | None = None) -> str:
    """``given`` (with ``-part`` when one call makes several creates), or a fresh key."""
    if given is None:
        return new_idempotency_key()
    return f"{given}-{part}" if part else given


def _multipart_headers(key: str) -> dict[str, str]:
    """A boundary derived from the key: every try of one upload sends the very same bytes."""
    boundary = "batchq-" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def create_backoff(attempt: int, base_s: float, retry_after: str | None = None) -> float:
    """Seconds before try ``attempt + 1`` of a create: ``Retry-After`` when given, else doubling."""
    if retry_after is not None:
        try:
            return min(MAX_BACKOFF_S, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return min(MAX_BACKOFF_S, base_s * 2.0 ** (attempt - 1))


class _CreateTries:
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
        if not (_transient_status(outcome.status_code) or _still_running(outcome)):
            return None
        return create_backoff(self.attempt, self.base_s, outcome.headers.get("retry-after"))


def _still_running(response: httpx2.Response) -> bool:
    """409 ``idempotency_request_in_progress``: the first try with this key is still being served."""
    return response.status_code == 409 and APIError.from_response(response).code == IN_PROGRESS_CODE


def api_base(api_url: str | None) -> str:
    """``http://host:8000`` → ``http://host:8000/v1``; a URL with a path (``.../v1``, ``.../api/v1/llm``) is kept."""
    url = (api_url or os.environ.get("BATCHQ_API_URL") or DEFAULT_API_URL).rstrip("/")
    return url if httpx2.URL(url).path not in ("", "/") else url + "/v1"


def _headers(api_key: str | None, on_behalf_of: str | None) -> dict[str, str]:
    key = api_key or os.environ.get("BATCHQ_API_KEY")
    if not key:
        raise ClientError("No API key: pass api_key= (--api-key) or set BATCHQ_API_KEY.")
    headers = {"Authorization": f"Bearer {key}"}
    user = on_behalf_of or os.environ.get("BATCHQ_ON_BEHALF_OF")
    if user:
        headers["X-On-Behalf-Of"] = user
    return headers


def _create_body(
    input_file_id: str, endpoint: str, window: str, metadata: Mapping[str, str] | None, output_ttl_s: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": window}
    if metadata:
        body["metadata"] = dict(metadata)
    if output_ttl_s is not None:
        body["output_expires_after"] = {"anchor": "created_at", "seconds": output_ttl_s}
    return body


def _upload_fields(purpose: str, ttl_s: int | None) -> dict[str, str]:
    fields = {"purpose": purpose}
    if ttl_s is not None:
        fields |= {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(ttl_s)}
    return fields


def _params(**values: object) -> dict[str, str | int]:
    return {name: value for name, value in values.items() if isinstance(value, str | int)}


@contextmanager
def _opened(rows: Rows) -> Iterator[IO[bytes]]:
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


def _upload_name(rows: Rows) -> str:
    return Path(rows).name if isinstance(rows, str | os.PathLike) else "input.jsonl"


class _Lines:
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


def _jsonl(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    lines = _Lines()
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


def _match_input(page: Page[Batch], input_file_id: str, since: int) -> tuple[Batch | None, bool]:
    """The batch of ``page`` made from ``input_file_id``, and whether older pages can be skipped."""
    for batch in page.data:
        if batch.input_file_id == input_file_id:
            return batch, True
        if batch.created_at < since:
            return None, True  # newest first: every later batch is older still
    return None, not page.has_more


def _long_poll_timeout(timeout: httpx2.Timeout, wait: float) -> httpx2.Timeout:
    """The client's timeout, with a read timeout that outlasts the server's long poll."""
    read = timeout.read
    if read is None or read > wait + 10:
        return timeout
    return httpx2.Timeout(connect=timeout.connect, read=wait + 10, write=timeout.write, pool=timeout.pool)


def _result_files(batch: Batch) -> list[str]:
    return [file_id for file_id in (batch.output_file_id, batch.error_file_id) if file_id]


def _retry_metadata(batch: Batch) -> dict[str, str] | None:
    """The batch's metadata plus ``retry_of``, when the 16 pairs allowed leave room for it."""
    metadata = dict(batch.metadata or {})
    if "retry_of" in metadata or len(metadata) < MAX_METADATA_PAIRS:
        metadata["retry_of"] = batch.id
    return metadata or None


def _retryable(batch: Batch) -> Batch:
    if not is_terminal(batch.status):
        raise ClientError(f"{batch.id} is {batch.status.value}: retry it once it has ended")
    if batch.status == Status.FAILED:
        raise ClientError(f"{batch.id} failed validation: no line ran; fix the input and submit it again")
    return batch


def _custom_ids(lines: Iterable[dict[str, Any]]) -> set[str]:
    return {str(line["custom_id"]) for line in lines}


class _Deadline:
    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def check(self, batch: Batch) -> None:
        if self.at is not None and time.monotonic() > self.at:
            counts = batch.request_counts
            raise TimeoutError(f"{batch.id} still {batch.status} ({counts.completed + counts.failed}/{counts.total})")


class _Poll:
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
        return list(_jsonl([self.data]))

    @classmethod
    def from_response(cls, response: httpx2.Response) -> ResultsPage:
        headers = response.headers
        more = headers.get(MORE_HEADER) == "true"
        return cls(response.content, headers[CURSOR_HEADER], Status(headers[STATUS_HEADER]), more)


def _results_params(after: str | None, limit: int, wait: float) -> dict[str, str | int | float]:
    params: dict[str, str | int | float] = {"limit": limit}
    if after:
        params["after"] = after
    if wait > 0:
        params["wait"] = wait
    return params


def _next_after(page: ResultsPage, follow: bool) -> bool:
    """Whether to ask for another page after ``page``."""
    return not page.ended and (follow or page.has_more)


class Client:
    """Synchronous client. ``api_url``/``api_key``/``on_behalf_of`` default to ``BATCHQ_API_URL``,
    ``BATCHQ_API_KEY`` and ``BATCHQ_ON_BEHALF_OF``; ``timeout`` is per request, in seconds."""

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        on_behalf_of: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        transport: httpx2.BaseTransport | None = None,
        create_attempts: int = CREATE_ATTEMPTS,
        create_backoff_s: float = CREATE_BACKOFF_S,
    ) -> None:
        headers = _headers(api_key, on_behalf_of)
        self.base_url = api_base(api_url)
        self.create_attempts, self.create_backoff_s = create_attempts, create_backoff_s
        self._http = httpx2.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        _raise_for_status(response)
        return response.json()

    def _model(self, model: type[BaseModel], method: str, path: str, **kwargs: Any) -> Any:
        return model.model_validate(self._send(method, path, **kwargs))

    def _create(self, model: type[BaseModel], path: str, key: str, **kwargs: Any) -> Any:
        """POST a create with ``Idempotency-Key: key``, sent again (same key) on transient failures."""
        tries = _CreateTries(self.create_attempts, self.create_backoff_s)
        headers = {IDEMPOTENCY_HEADER: key} | (_multipart_headers(key) if "files" in kwargs else {})
        while True:
            try:
                response = self._http.post(path, headers=headers, **kwargs)
            except httpx2.TransportError as error:
                pause = tries.pause_after(error)
                if pause is None:
                    raise
            else:
                pause = tries.pause_after(response)
                if pause is None:
                    _raise_for_status(response)
                    return model.model_validate(response.json())
            time.sleep(pause)

    # -- batches ---------------------------------------------------------------------------

    def submit(
        self,
        rows_or_path: Rows,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        *,
        output_expires_after_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Upload the input (rows: an iterable of dicts, or a JSONL path) and create a batch from it.

        ``output_expires_after_s``: the lifetime of the output and error files (1 hour to 30 days).
        ``idempotency_key``: the upload is sent with ``<key>-file`` and the create with
        ``<key>-batch`` (default: fresh keys). One batch only: see ``submit_many`` for any size.
        """
        uploaded = self.upload(rows_or_path, idempotency_key=_key_for(idempotency_key, "file"))
        return self.create(
            uploaded.id,
            endpoint,
            completion_window,
            metadata,
            output_expires_after_s=output_expires_after_s,
            idempotency_key=_key_for(idempotency_key, "batch"),
        )

    def submit_many(
        self,
        source: str | os.PathLike[str],
        output: str | os.PathLike[str],
        errors: str | os.PathLike[str] | None = None,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        *,
        output_expires_after_s: int | None = None,
        poll_interval: float = 1.0,
        progress: Callable[[BulkProgress], None] | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> BulkResult:
        """Run a JSONL file of any size to the end: validated, split into batches within the server's
        limits, submitted, followed, and merged into ``output`` and ``errors`` (default
        ``<output stem>_errors``).

        Resumable: a manifest beside ``output`` (``<output>.batchq-manifest.json``) records every
        batch, and the same call continues a run that was killed without submitting any line
        twice. After a finished run, the same call runs the job again (``notice`` is told that
        the old manifest was moved aside). Merged order: chunk after chunk (see ``batchq.bulk``).
        """
        from batchq.bulk import BulkRequest, default_errors_path, submit_many

        target = Path(output)
        request = BulkRequest(
            Path(source), target, Path(errors) if errors else default_errors_path(target), endpoint,
            completion_window, metadata, output_expires_after_s,
        )  # fmt: skip
        return submit_many(self, request, poll_interval=poll_interval, progress=progress, notice=notice)

    def create(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        *,
        output_expires_after_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Create a batch; sent again with the same ``Idempotency-Key`` on transient failures."""
        body = _create_body(input_file_id, endpoint, completion_window, metadata, output_expires_after_s)
        batch: Batch = self._create(Batch, "/batches", _key_for(idempotency_key), json=body)
        return batch

    def get(self, batch_id: str) -> Batch:
        batch: Batch = self._model(Batch, "GET", f"/batches/{batch_id}")
        return batch

    def list(self, limit: int = 20, after: str | None = None) -> Page[Batch]:
        """One page of the caller's batches, newest first."""
        page: Page[Batch] = self._model(Page[Batch], "GET", "/batches", params=_params(limit=limit, after=after))
        return page

    def cancel(self, batch_id: str) -> Batch:
        """Ask to cancel; a batch that already finished raises ``APIError`` (409)."""
        batch: Batch = self._model(Batch, "POST", f"/batches/{batch_id}/cancel")
        return batch

    def limits(self) -> Limits:
        """The server's limits (``GET /batches/limits``); OpenAI's published ones if it has no such endpoint."""
        try:
            found: Limits = self._model(Limits, "GET", "/batches/limits")
        except APIError as error:
            if error.status_code != 404:
                raise
            return OPENAI_LIMITS
        return found

    def find_batch(self, input_file_id: str, since: int) -> Batch | None:
        """The caller's batch created from ``input_file_id`` at ``since`` (unix time) or later, if any."""
        after = None
        for _ in range(MAX_FIND_PAGES):
            page = self.list(limit=100, after=after)
            found, done = _match_input(page, input_file_id, since)
            if found is not None or done:
                return found
            after = page.last_id
        return None

    def wait(
        self, batch_id: str, poll_interval: float = 1.0, timeout: float | None = None, progress: Progress | None = None
    ) -> Batch:
        """Poll until the batch is completed, failed, expired or cancelled (``TimeoutError`` after ``timeout`` s).

        ``progress`` is called with every polled ``Batch``. Up to ``MAX_POLL_FAILURES`` consecutive
        transient errors (connection errors, 408, 429, 5xx) are ridden out.
        """
        deadline, poll = _Deadline(timeout), _Poll()
        while True:
            try:
                batch = self.get(batch_id)
            except (httpx2.TransportError, APIError) as error:
                poll.failed(error)
                time.sleep(poll_interval)
                continue
            poll.succeeded()
            if progress is not None:
                progress(batch)
            if is_terminal(batch.status):
                return batch
            deadline.check(batch)
            time.sleep(poll_interval)

    def results(self, batch: str | Batch) -> Iterator[dict[str, Any]]:
        """Every result line of a batch, parsed: the output file's lines, then the error file's."""
        found = self.get(batch) if isinstance(batch, str) else batch
        for file_id in _result_files(found):
            yield from _jsonl(self.iter_content(file_id))

    def results_page(self, batch_id: str, after: str | None = None, limit: int = 1000, wait: float = 0) -> ResultsPage:
        """One page of the result lines stored so far after the cursor ``after`` (running or ended batch).

        ``wait`` > 0: the server holds the request until a line is stored or the batch ends (≤ 30 s).
        """
        params = _results_params(after, limit, wait)
        timeout = _long_poll_timeout(self._http.timeout, wait)
        response = self._http.get(f"/batches/{batch_id}/results", params=params, timeout=timeout)
        _raise_for_status(response)
        return ResultsPage.from_response(response)

    def iter_result_pages(
        self, batch_id: str, after: str | None = None, *, follow: bool = True, limit: int = 1000
    ) -> Iterator[ResultsPage]:
        """Pages of result lines from the cursor ``after`` (the start by default).

        ``follow``: long-poll for lines as they are stored until the batch ends; else stop at the
        lines stored so far. Each line comes once; a page's ``cursor`` resumes right after it, in
        this process or another. Transient failures are ridden out like ``wait``'s.
        """
        poll, wait = _Poll(), RESULTS_WAIT_S if follow else 0.0
        while True:
            try:
                page = self.results_page(batch_id, after, limit, wait)
            except (httpx2.TransportError, APIError) as error:
                poll.failed(error)
                time.sleep(1.0)
                continue
            poll.succeeded()
            yield page
            if not _next_after(page, follow):
                return
            after = page.cursor

    def iter_results(
        self, batch_id: str, after: str | None = None, *, follow: bool = True, limit: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Result lines, parsed, as they are stored (``follow``) or as stored so far; each once.

        To resume after a restart, keep the ``cursor`` of ``iter_result_pages`` instead.
        """
        for page in self.iter_result_pages(batch_id, after, follow=follow, limit=limit):
            yield from page.lines()

    def retry(self, batch: str | Batch, completion_window: str | None = None) -> Batch | None:
        """A new batch of the lines of ``batch`` that did not succeed; None when every line did.

        Those are the input lines without a line in its output file: upstream errors, lines
        cancelled, expired or lost, and lines that never ran (a batch cancelled before it started).
        Their requests are taken from the original input file, the endpoint and metadata are kept
        (plus ``retry_of``), and the window is the original's unless given.
        """
        found = _retryable(self.get(batch) if isinstance(batch, str) else batch)
        done = _custom_ids(_jsonl(self.iter_content(found.output_file_id))) if found.output_file_id else set()
        rows = (row for row in _jsonl(self.iter_content(found.input_file_id)) if row.get("custom_id") not in done)
        first = next(rows, None)
        if first is None:
            return None
        window = completion_window or found.completion_window
        return self.submit(itertools.chain([first], rows), found.endpoint, window, _retry_metadata(found))

    # -- files -----------------------------------------------------------------------------

    def upload(
        self,
        rows_or_path: Rows,
        purpose: str = "batch",
        *,
        expires_after_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> FileObject:
        """Upload a JSONL file (a path, or rows written to a temporary file), streamed.

        ``expires_after_s``: the file's lifetime (1 hour to 30 days; default: the server's).
        A retry after a transient failure streams the file again, with the same ``Idempotency-Key``.
        """
        data = _upload_fields(purpose, expires_after_s)
        with _opened(rows_or_path) as source:
            return self.upload_stream(source, _upload_name(rows_or_path), data, _key_for(idempotency_key))

    def upload_stream(self, source: IO[bytes], filename: str, fields: dict[str, str], key: str) -> FileObject:
        """Upload from a seekable binary stream (read from its start on every try)."""
        files = {"file": (filename, source, "application/jsonl")}
        uploaded: FileObject = self._create(FileObject, "/files", key, files=files, data=fields)
        return uploaded

    def list_files(
        self, purpose: str | None = None, limit: int | None = None, order: str = "desc", after: str | None = None
    ) -> Page[FileObject]:
        params = _params(purpose=purpose, limit=limit, order=order, after=after)
        page: Page[FileObject] = self._model(Page[FileObject], "GET", "/files", params=params)
        return page

    def get_file(self, file_id: str) -> FileObject:
        found: FileObject = self._model(FileObject, "GET", f"/files/{file_id}")
        return found

    def delete_file(self, file_id: str) -> DeletedFile:
        deleted: DeletedFile = self._model(DeletedFile, "DELETE", f"/files/{file_id}")
        return deleted

    def iter_content(self, file_id: str) -> Iterator[bytes]:
        """A file's bytes, streamed in chunks."""
        with self._http.stream("GET", f"/files/{file_id}/content") as response:
            if response.is_error:
                response.read()
                _raise_for_status(response)
            yield from response.iter_bytes()

    def download(self, file_id: str, path: str | os.PathLike[str]) -> Path:
        """Stream a file's content to ``path`` (written whole or not at all); returns the path."""
        target = Path(path)
        with _atomic_writer(target) as sink:
            for chunk in self.iter_content(file_id):
                sink.write(chunk)
        return target


@contextmanager
def _atomic_writer(target: Path) -> Iterator[IO[bytes]]:
    partial = target.with_name(f".{target.name}.partial")
    try:
        with open(partial, "wb") as sink:
            yield sink
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


class AsyncClient:
    """The asyncio twin of ``Client``: the same methods, awaited (``results`` is an async iterator)."""

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        on_behalf_of: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        create_attempts: int = CREATE_ATTEMPTS,
        create_backoff_s: float = CREATE_BACKOFF_S,
    ) -> None:
        headers = _headers(api_key, on_behalf_of)
        self.base_url = api_base(api_url)
        self.create_attempts, self.create_backoff_s = create_attempts, create_backoff_s
        self._http = httpx2.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _model(self, model: type[BaseModel], method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        _raise_for_status(response)
        return model.model_validate(response.json())

    async def _create(self, model: type[BaseModel], path: str, key: str, **kwargs: Any) -> Any:
        """``Client._create``, awaited."""
        tries = _CreateTries(self.create_attempts, self.create_backoff_s)
        headers = {IDEMPOTENCY_HEADER: key} | (_multipart_headers(key) if "files" in kwargs else {})
        while True:
            try:
                response = await self._http.post(path, headers=headers, **kwargs)
            except httpx2.TransportError as error:
                pause = tries.pause_after(error)
                if pause is None:
                    raise
            else:
                pause = tries.pause_after(response)
                if pause is None:
                    _raise_for_status(response)
                    return model.model_validate(response.json())
            await asyncio.sleep(pause)

    async def submit(
        self,
        rows_or_path: Rows,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        *,
        output_expires_after_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        uploaded = await self.upload(rows_or_path, idempotency_key=_key_for(idempotency_key, "file"))
        return await self.create(
            uploaded.id,
            endpoint,
            completion_window,
            metadata,
            output_expires_after_s=output_expires_after_s,
            idempotency_key=_key_for(idempotency_key, "batch"),
        )

    async def create(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        *,
        output_expires_after_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        body = _create_body(input_file_id, endpoint, completion_window, metadata, output_expires_after_s)
        batch: Batch = await self._create(Batch, "/batches", _key_for(idempotency_key), json=body)
        return batch

    async def get(self, batch_id: str) -> Batch:
        batch: Batch = await self._model(Batch, "GET", f"/batches/{batch_id}")
        return batch

    async def list(self, limit: int = 20, after: str | None = None) -> Page[Batch]:
        page: Page[Batch] = await self._model(Page[Batch], "GET", "/batches", params=_params(limit=limit, after=after))
        return page

    async def cancel(self, batch_id: str) -> Batch:
        batch: Batch = await self._model(Batch, "POST", f"/batches/{batch_id}/cancel")
        return batch

    async def wait(
        self, batch_id: str, poll_interval: float = 1.0, timeout: float | None = None, progress: Progress | None = None
    ) -> Batch:
        deadline, poll = _Deadline(timeout), _Poll()
        while True:
            try:
                batch = await self.get(batch_id)
            except (httpx2.TransportError, APIError) as error:
                poll.failed(error)
                await asyncio.sleep(poll_interval)
                continue
            poll.succeeded()
            if progress is not None:
                progress(batch)
            if is_terminal(batch.status):
                return batch
            deadline.check(batch)
            await asyncio.sleep(poll_interval)

    async def results(self, batch: str | Batch) -> AsyncIterator[dict[str, Any]]:
        found = await self.get(batch) if isinstance(batch, str) else batch
        for file_id in _result_files(found):
            async for line in self._lines(file_id):
                yield line

    async def results_page(
        self, batch_id: str, after: str | None = None, limit: int = 1000, wait: float = 0
    ) -> ResultsPage:
        params = _results_params(after, limit, wait)
        timeout = _long_poll_timeout(self._http.timeout, wait)
        response = await self._http.get(f"/batches/{batch_id}/results", params=params, timeout=timeout)
        _raise_for_status(response)
        return ResultsPage.from_response(response)

    async def iter_result_pages(
        self, batch_id: str, after: str | None = None, *, follow: bool = True, limit: int = 1000
    ) -> AsyncIterator[ResultsPage]:
        """``Client.iter_result_pages``, awaited."""
        poll, wait = _Poll(), RESULTS_WAIT_S if follow else 0.0
        while True:
            try:
                page = await self.results_page(batch_id, after, limit, wait)
            except (httpx2.TransportError, APIError) as error:
                poll.failed(error)
                await asyncio.sleep(1.0)
                continue
            poll.succeeded()
            yield page
            if not _next_after(page, follow):
                return
            after = page.cursor

    async def iter_results(
        self, batch_id: str, after: str | None = None, *, follow: bool = True, limit: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """``Client.iter_results``, as an async iterator."""
        async for page in self.iter_result_pages(batch_id, after, follow=follow, limit=limit):
            for line in page.lines():
                yield line

    async def retry(self, batch: str | Batch, completion_window: str | None = None) -> Batch | None:
        """``Client.retry``: a new batch of the lines that did not succeed; None when all did."""
        found = _retryable(await self.get(batch) if isinstance(batch, str) else batch)
        output = found.output_file_id
        done = {str(line["custom_id"]) async for line in self._lines(output)} if output else set()
        with tempfile.TemporaryDirectory(prefix="batchq-retry-") as workdir:
            path = Path(workdir) / f"{found.id}_retry.jsonl"
            with open(path, "wb") as sink:
                async for row in self._lines(found.input_file_id):
                    if row.get("custom_id") not in done:
                        sink.write(orjson.dumps(row) + b"\n")
            if path.stat().st_size == 0:
                return None
            uploaded = await self.upload(path)
        window = completion_window or found.completion_window
        return await self.create(uploaded.id, found.endpoint, window, _retry_metadata(found))

    async def _lines(self, file_id: str) -> AsyncIterator[dict[str, Any]]:
        async with self._content(file_id) as response:
            lines = _Lines()
            async for chunk in response.aiter_bytes():
                for line in lines.feed(chunk):
                    yield line
            for line in lines.finish():
                yield line

    async def upload(
        self,
        rows_or_path: Rows,
        purpose: str = "batch",
        *,
        expires_after_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> FileObject:
        data = _upload_fields(purpose, expires_after_s)
        with _opened(rows_or_path) as source:
            files = {"file": (_upload_name(rows_or_path), source, "application/jsonl")}
            key = _key_for(idempotency_key)
            uploaded: FileObject = await self._create(FileObject, "/files", key, files=files, data=data)
        return uploaded

    async def list_files(
        self, purpose: str | None = None, limit: int | None = None, order: str = "desc", after: str | None = None
    ) -> Page[FileObject]:
        params = _params(purpose=purpose, limit=limit, order=order, after=after)
        page: Page[FileObject] = await self._model(Page[FileObject], "GET", "/files", params=params)
        return page

    async def get_file(self, file_id: str) -> FileObject:
        found: FileObject = await self._model(FileObject, "GET", f"/files/{file_id}")
        return found

    async def delete_file(self, file_id: str) -> DeletedFile:
        deleted: DeletedFile = await self._model(DeletedFile, "DELETE", f"/files/{file_id}")
        return deleted

    @asynccontextmanager
    async def _content(self, file_id: str) -> AsyncIterator[httpx2.Response]:
        async with self._http.stream("GET", f"/files/{file_id}/content") as response:
            if response.is_error:
                await response.aread()
                _raise_for_status(response)
            yield response

    async def download(self, file_id: str, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        async with self._content(file_id) as response:
            with _atomic_writer(target) as sink:
                async for chunk in response.aiter_bytes():
                    sink.write(chunk)
        return target
