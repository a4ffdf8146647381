"""The synchronous client: ``Client``. Its decisions live in ``batchq.client.common``, shared with
``AsyncClient``."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx2
from pydantic import BaseModel

from batchq.client.bulk import BulkProgress, BulkRequest, BulkResult, default_errors_path, submit_many
from batchq.client.common import (
    CREATE_ATTEMPTS,
    CREATE_BACKOFF_S,
    DEFAULT_TIMEOUT,
    IDEMPOTENCY_HEADER,
    MAX_FIND_PAGES,
    OPENAI_LIMITS,
    RESULTS_WAIT_S,
    CreateTries,
    Deadline,
    Poll,
    Progress,
    ResultsPage,
    Rows,
    api_base,
    atomic_writer,
    auth_headers,
    create_body,
    jsonl,
    key_for,
    long_poll_timeout,
    match_input,
    multipart_headers,
    next_after,
    opened,
    query_params,
    result_files,
    results_params,
    retryable,
    upload_fields,
    upload_name,
)  # fmt: skip
from batchq.client.errors import APIError, raise_for_status
from batchq.domain import resubmit
from batchq.domain.limits import Limits
from batchq.domain.models import Batch, DeletedFile, FileObject, Page
from batchq.domain.status import is_terminal


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
        headers = auth_headers(api_key, on_behalf_of)
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
        raise_for_status(response)
        return response.json()

    def _model(self, model: type[BaseModel], method: str, path: str, **kwargs: Any) -> Any:
        return model.model_validate(self._send(method, path, **kwargs))

    def _create(self, model: type[BaseModel], path: str, key: str, **kwargs: Any) -> Any:
        """POST a create with ``Idempotency-Key: key``, sent again (same key) on transient failures."""
        tries = CreateTries(self.create_attempts, self.create_backoff_s)
        headers = {IDEMPOTENCY_HEADER: key} | (multipart_headers(key) if "files" in kwargs else {})
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
                    raise_for_status(response)
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
        uploaded = self.upload(rows_or_path, idempotency_key=key_for(idempotency_key, "file"))
        return self.create(
            uploaded.id,
            endpoint,
            completion_window,
            metadata,
            output_expires_after_s=output_expires_after_s,
            idempotency_key=key_for(idempotency_key, "batch"),
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
        the old manifest was moved aside). Merged order: chunk after chunk (see ``batchq.client.bulk``).
        """
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
        body = create_body(input_file_id, endpoint, completion_window, metadata, output_expires_after_s)
        batch: Batch = self._create(Batch, "/batches", key_for(idempotency_key), json=body)
        return batch

    def get(self, batch_id: str) -> Batch:
        batch: Batch = self._model(Batch, "GET", f"/batches/{batch_id}")
        return batch

    def list(self, limit: int = 20, after: str | None = None) -> Page[Batch]:
        """One page of the caller's batches, newest first."""
        page: Page[Batch] = self._model(Page[Batch], "GET", "/batches", params=query_params(limit=limit, after=after))
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
            found, done = match_input(page, input_file_id, since)
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
        deadline, poll = Deadline(timeout), Poll()
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
        for file_id in result_files(found):
            yield from jsonl(self.iter_content(file_id))

    def results_page(self, batch_id: str, after: str | None = None, limit: int = 1000, wait: float = 0) -> ResultsPage:
        """One page of the result lines stored so far after the cursor ``after`` (running or ended batch).

        ``wait`` > 0: the server holds the request until a line is stored or the batch ends (≤ 30 s).
        """
        params = results_params(after, limit, wait)
        timeout = long_poll_timeout(self._http.timeout, wait)
        response = self._http.get(f"/batches/{batch_id}/results", params=params, timeout=timeout)
        raise_for_status(response)
        return ResultsPage.from_response(response)

    def iter_result_pages(
        self, batch_id: str, after: str | None = None, *, follow: bool = True, limit: int = 1000
    ) -> Iterator[ResultsPage]:
        """Pages of result lines from the cursor ``after`` (the start by default).

        ``follow``: long-poll for lines as they are stored until the batch ends; else stop at the
        lines stored so far. Each line comes once; a page's ``cursor`` resumes right after it, in
        this process or another. Transient failures are ridden out like ``wait``'s.
        """
        poll, wait = Poll(), RESULTS_WAIT_S if follow else 0.0
        while True:
            try:
                page = self.results_page(batch_id, after, limit, wait)
            except (httpx2.TransportError, APIError) as error:
                poll.failed(error)
                time.sleep(1.0)
                continue
            poll.succeeded()
            yield page
            if not next_after(page, follow):
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
        found = retryable(self.get(batch) if isinstance(batch, str) else batch)
        done = resubmit.succeeded(jsonl(self.iter_content(found.output_file_id))) if found.output_file_id else set()
        rows = resubmit.unfinished(jsonl(self.iter_content(found.input_file_id)), done)
        first = next(rows, None)
        if first is None:
            return None
        window = completion_window or found.completion_window
        return self.submit(itertools.chain([first], rows), found.endpoint, window, resubmit.retry_metadata(found))

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
        data = upload_fields(purpose, expires_after_s)
        with opened(rows_or_path) as source:
            return self.upload_stream(source, upload_name(rows_or_path), data, key_for(idempotency_key))

    def upload_stream(self, source: IO[bytes], filename: str, fields: dict[str, str], key: str) -> FileObject:
        """Upload from a seekable binary stream (read from its start on every try)."""
        files = {"file": (filename, source, "application/jsonl")}
        uploaded: FileObject = self._create(FileObject, "/files", key, files=files, data=fields)
        return uploaded

    def list_files(
        self, purpose: str | None = None, limit: int | None = None, order: str = "desc", after: str | None = None
    ) -> Page[FileObject]:
        params = query_params(purpose=purpose, limit=limit, order=order, after=after)
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
                raise_for_status(response)
            yield from response.iter_bytes()

    def download(self, file_id: str, path: str | os.PathLike[str]) -> Path:
        """Stream a file's content to ``path`` (written whole or not at all); returns the path."""
        target = Path(path)
        with atomic_writer(target) as sink:
            for chunk in self.iter_content(file_id):
                sink.write(chunk)
        return target
