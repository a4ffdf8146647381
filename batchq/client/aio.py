"""The asyncio client: ``AsyncClient``, the twin of ``Client`` with the same methods, awaited. Its
decisions live in ``batchq.client.common``, shared with ``Client``."""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any, TypeAlias

import httpx2
import orjson
from pydantic import BaseModel

from batchq.client.bulk import BulkProgress, BulkResult
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
    Lines,
    Poll,
    Progress,
    ResultsPage,
    Rows,
    api_base,
    atomic_writer,
    auth_headers,
    create_body,
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
from batchq.client.sync import Client
from batchq.domain import resubmit
from batchq.domain.limits import Limits
from batchq.domain.models import Batch, DeletedFile, FileObject, Page
from batchq.domain.status import is_terminal

ParsedLines: TypeAlias = list[dict[str, Any]]  # (``list`` is a method's name inside the class)


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
        headers = auth_headers(api_key, on_behalf_of)
        self.base_url = api_base(api_url)
        self.create_attempts, self.create_backoff_s = create_attempts, create_backoff_s
        self._http = httpx2.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self._sync_twin = functools.partial(
            Client, self.base_url, api_key, on_behalf_of, timeout,
            create_attempts=create_attempts, create_backoff_s=create_backoff_s,
        )  # fmt: skip

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _model(self, model: type[BaseModel], method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        raise_for_status(response)
        return model.model_validate(response.json())

    async def _create(self, model: type[BaseModel], path: str, key: str, **kwargs: Any) -> Any:
        """``Client._create``, awaited."""
        tries = CreateTries(self.create_attempts, self.create_backoff_s)
        headers = {IDEMPOTENCY_HEADER: key} | (multipart_headers(key) if "files" in kwargs else {})
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
                    raise_for_status(response)
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
        uploaded = await self.upload(rows_or_path, idempotency_key=key_for(idempotency_key, "file"))
        return await self.create(
            uploaded.id,
            endpoint,
            completion_window,
            metadata,
            output_expires_after_s=output_expires_after_s,
            idempotency_key=key_for(idempotency_key, "batch"),
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
        body = create_body(input_file_id, endpoint, completion_window, metadata, output_expires_after_s)
        batch: Batch = await self._create(Batch, "/batches", key_for(idempotency_key), json=body)
        return batch

    async def submit_many(
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
        """``Client.submit_many``: the same run (split, submit, follow, merge, resume), in a worker thread
        with a ``Client`` of this client's URL, key, identity and timeout. It reads and writes files
        and sleeps between polls; a thread keeps that off the event loop."""

        def run() -> BulkResult:
            with self._sync_twin() as client:
                return client.submit_many(
                    source, output, errors, endpoint, completion_window, metadata,
                    output_expires_after_s=output_expires_after_s, poll_interval=poll_interval,
                    progress=progress, notice=notice,
                )  # fmt: skip

        return await asyncio.to_thread(run)

    async def get(self, batch_id: str) -> Batch:
        batch: Batch = await self._model(Batch, "GET", f"/batches/{batch_id}")
        return batch

    async def list(self, limit: int = 20, after: str | None = None) -> Page[Batch]:
        page: Page[Batch] = await self._model(
            Page[Batch], "GET", "/batches", params=query_params(limit=limit, after=after)
        )
        return page

    async def cancel(self, batch_id: str) -> Batch:
        batch: Batch = await self._model(Batch, "POST", f"/batches/{batch_id}/cancel")
        return batch

    async def limits(self) -> Limits:
        """``Client.limits``: the server's limits, or OpenAI's published ones."""
        try:
            found: Limits = await self._model(Limits, "GET", "/batches/limits")
        except APIError as error:
            if error.status_code != 404:
                raise
            return OPENAI_LIMITS
        return found

    async def find_batch(self, input_file_id: str, since: int) -> Batch | None:
        """``Client.find_batch``: the caller's batch created from ``input_file_id`` at ``since`` or later."""
        after = None
        for _ in range(MAX_FIND_PAGES):
            page = await self.list(limit=100, after=after)
            found, done = match_input(page, input_file_id, since)
            if found is not None or done:
                return found
            after = page.last_id
        return None

    async def wait(
        self, batch_id: str, poll_interval: float = 1.0, timeout: float | None = None, progress: Progress | None = None
    ) -> Batch:
        deadline, poll = Deadline(timeout), Poll()
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
        for file_id in result_files(found):
            async for line in self._lines(file_id):
                yield line

    async def results_page(
        self, batch_id: str, after: str | None = None, limit: int = 1000, wait: float = 0
    ) -> ResultsPage:
        params = results_params(after, limit, wait)
        timeout = long_poll_timeout(self._http.timeout, wait)
        response = await self._http.get(f"/batches/{batch_id}/results", params=params, timeout=timeout)
        raise_for_status(response)
        return ResultsPage.from_response(response)

    async def iter_result_pages(
        self, batch_id: str, after: str | None = None, *, follow: bool = True, limit: int = 1000
    ) -> AsyncIterator[ResultsPage]:
        """``Client.iter_result_pages``, awaited."""
        poll, wait = Poll(), RESULTS_WAIT_S if follow else 0.0
        while True:
            try:
                page = await self.results_page(batch_id, after, limit, wait)
            except (httpx2.TransportError, APIError) as error:
                poll.failed(error)
                await asyncio.sleep(1.0)
                continue
            poll.succeeded()
            yield page
            if not next_after(page, follow):
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
        found = retryable(await self.get(batch) if isinstance(batch, str) else batch)
        output = found.output_file_id
        done = resubmit.succeeded([line async for line in self._lines(output)]) if output else set()
        with tempfile.TemporaryDirectory(prefix="batchq-retry-") as workdir:
            path = Path(workdir) / f"{found.id}_retry.jsonl"
            with open(path, "wb") as sink:
                async for rows in self._pages(found.input_file_id):
                    sink.writelines(orjson.dumps(row) + b"\n" for row in resubmit.unfinished(rows, done))
            if path.stat().st_size == 0:
                return None
            window = completion_window or found.completion_window
            return await self.submit(path, found.endpoint, window, resubmit.retry_metadata(found))

    async def _pages(self, file_id: str) -> AsyncIterator[ParsedLines]:
        """A JSONL file's parsed lines, a chunk's worth at a time."""
        async with self._content(file_id) as response:
            lines = Lines()
            async for chunk in response.aiter_bytes():
                yield lines.feed(chunk)
            yield lines.finish()

    async def _lines(self, file_id: str) -> AsyncIterator[dict[str, Any]]:
        async for rows in self._pages(file_id):
            for row in rows:
                yield row

    async def upload(
        self,
        rows_or_path: Rows,
        purpose: str = "batch",
        *,
        expires_after_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> FileObject:
        data = upload_fields(purpose, expires_after_s)
        with opened(rows_or_path) as source:
            return await self.upload_stream(source, upload_name(rows_or_path), data, key_for(idempotency_key))

    async def upload_stream(self, source: IO[bytes], filename: str, fields: dict[str, str], key: str) -> FileObject:
        """``Client.upload_stream``: upload from a seekable binary stream (read from its start on every try)."""
        files = {"file": (filename, source, "application/jsonl")}
        uploaded: FileObject = await self._create(FileObject, "/files", key, files=files, data=fields)
        return uploaded

    async def list_files(
        self, purpose: str | None = None, limit: int | None = None, order: str = "desc", after: str | None = None
    ) -> Page[FileObject]:
        params = query_params(purpose=purpose, limit=limit, order=order, after=after)
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
                raise_for_status(response)
            yield response

    async def iter_content(self, file_id: str) -> AsyncIterator[bytes]:
        """A file's bytes, streamed in chunks."""
        async with self._content(file_id) as response:
            async for chunk in response.aiter_bytes():
                yield chunk

    async def download(self, file_id: str, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        with atomic_writer(target) as sink:
            async for chunk in self.iter_content(file_id):
                sink.write(chunk)
        return target
