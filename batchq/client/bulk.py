"""Jobs larger than one batch: split, submit, follow, merge and resume (``Client.submit_many``).

The input is validated as the server would and cut into chunks that fit the server's limits
(``batchq.client.split``, one streaming pass: a bad line refuses the file before anything is sent).
Each chunk is uploaded as a byte range of the source and made a batch of its own, with
``Idempotency-Key``s derived from the manifest (``batchq.client.manifest``), which is rewritten after
every step. The batches are followed together; as each one ends, its output and error files are
appended to one merged output file and one merged error file **in chunk order** (within a chunk,
the order of its files: lines as they were stored). The merged files are written beside their
targets (``.<name>.partial``) and moved into place when every chunk is merged. A chunk whose batch
still fails (validation on the server) gives one error line per request, so every input line ends
up exactly once in the merged output or the merged errors.

Killed at any point, the same call (or ``batchq submit`` command) resumes from the manifest: no
chunk is uploaded into a second batch, no line is submitted twice, and no merged line is written
twice (the partial files are cut back to what the manifest says was merged). Only an unfinished
run is resumed: after a finished one, the same call starts a new run (its manifest is kept aside).
One run per output at a time (a lock beside the manifest).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

import httpx2
import orjson

from batchq.client.errors import APIError, ClientError
from batchq.client.manifest import ChunkRecord, ChunkState, Manifest, archive, load, locked, manifest_path, save
from batchq.client.split import ByteRange, SplitLimits, file_sha256, plan_chunks
from batchq.domain.models import Batch
from batchq.domain.results import error_line
from batchq.domain.status import Status, is_terminal

if TYPE_CHECKING:
    from batchq.client.sync import Client

POLL_PACE_S = 0.2  # at least this long between two status polls of one batch, per batch followed


@dataclass(frozen=True)
class BulkProgress:
    done: int  # lines with a result
    failed: int
    total: int
    batches: int
    ended: int  # batches that ended
    status: str  # a short description (e.g. "2/3 batches")


@dataclass(frozen=True)
class BulkResult:
    batches: list[Batch]  # in chunk order
    output: Path
    errors: Path
    manifest: Path


@dataclass(frozen=True)
class BulkRequest:
    """What to submit: the arguments that a resumed run must repeat."""

    source: Path
    output: Path
    errors: Path
    endpoint: str
    completion_window: str = "24h"
    metadata: Mapping[str, str] | None = None
    output_expires_after_s: int | None = None


def default_errors_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_errors{output.suffix or '.jsonl'}")


def submit_many(
    client: Client,
    request: BulkRequest,
    *,
    poll_interval: float = 1.0,
    progress: Callable[[BulkProgress], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> BulkResult:
    """Run ``request`` to the end, or resume its unfinished run; see the module docstring.

    ``notice`` is told (one line) when a finished run's manifest is moved aside for a new run.
    """
    path = manifest_path(request.output)
    with locked(path):
        manifest = _resume(load(path), request, path, notice) or _plan(client, request)
        save(manifest, path)
        return _Run(client, manifest, path, poll_interval, progress).run()


def _resume(
    found: Manifest | None, request: BulkRequest, path: Path, notice: Callable[[str], None] | None
) -> Manifest | None:
    """The unfinished run to go on with; None for a new run (a finished run's manifest is moved aside)."""
    if found is None:
        return None
    if found.finished:
        moved = archive(path, found)
        if notice is not None:
            notice(f"{path.name} was of a finished run (kept as {moved.name}): starting a new run.")
        return None
    asked = (request.endpoint, request.completion_window, _metadata(request.metadata), request.output_expires_after_s)
    same_source = Path(found.source) == request.source.resolve() and found.source_bytes == request.source.stat().st_size
    if not same_source or found.settings() != asked or Path(found.errors) != request.errors.resolve():
        raise ClientError(f"{path} is of another unfinished run: delete it (or pick another output).")
    if file_sha256(request.source) != found.source_sha256:
        raise ClientError(f"{request.source} changed since the unfinished run in {path} began.")
    return found


def _plan(client: Client, request: BulkRequest) -> Manifest:
    limits = client.limits()
    if limits.endpoints and request.endpoint not in limits.endpoints:
        raise ClientError(f"The server takes no batches for {request.endpoint} (only {', '.join(limits.endpoints)}).")
    max_lines = limits.max_requests_per_batch
    if limits.max_enqueued_requests_per_key:
        max_lines = min(max_lines, limits.max_enqueued_requests_per_key)
    split = SplitLimits(max_lines, limits.max_file_bytes, limits.max_line_bytes)
    plan = plan_chunks(request.source, request.endpoint, split)
    chunks = [
        ChunkRecord(index=i, start=c.start, end=c.end, first_line=c.first_line, lines=c.lines)
        for i, c in enumerate(plan.chunks)
    ]
    return Manifest(
        source=str(request.source.resolve()), source_bytes=plan.size, source_sha256=plan.sha256,
        endpoint=request.endpoint, completion_window=request.completion_window,
        metadata=_metadata(request.metadata), output_expires_after_s=request.output_expires_after_s,
        output=str(request.output.resolve()), errors=str(request.errors.resolve()), chunks=chunks,
    )  # fmt: skip


def _metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    return dict(metadata) if metadata else None


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


class _Run:
    def __init__(
        self,
        client: Client,
        manifest: Manifest,
        path: Path,
        poll_interval: float,
        progress: Callable[[BulkProgress], None] | None,
    ) -> None:
        self.client, self.m, self.path = client, manifest, path
        self.poll_interval, self.progress = poll_interval, progress
        self.batches: dict[int, Batch] = {}
        self.refused: set[int] = set()  # chunks whose create the server refused (429) in this run
        self.output, self.errors = Path(manifest.output), Path(manifest.errors)

    def run(self) -> BulkResult:
        if not self.m.finished:
            self._restore_partials()
            self._loop()
            self._finish()
        return BulkResult(self._final_batches(), self.output, self.errors, self.path)

    def _loop(self) -> None:
        while True:
            self._submit_pending()
            self._poll()
            self._merge_ready()
            self._report()
            if all(c.state is ChunkState.MERGED for c in self.m.chunks):
                return
            following = sum(1 for c in self.m.chunks if c.state is ChunkState.CREATED)
            time.sleep(max(self.poll_interval, POLL_PACE_S * following))

    def _save(self) -> None:
        save(self.m, self.path)

    # -- submitting ----------------------------------------------------------------------------------

    def _submit_pending(self) -> None:
        for chunk in self.m.chunks:
            waiting = chunk.state in (ChunkState.PLANNED, ChunkState.UPLOADED, ChunkState.CREATING)
            if waiting and not self._submit(chunk):
                return  # the server takes no more for now: try again after a poll

    def _submit(self, chunk: ChunkRecord) -> bool:
        try:
            if chunk.state is ChunkState.PLANNED:
                self._upload(chunk)
            self._create(chunk)
        except APIError as error:
            if error.status_code != 429:
                raise
            self.refused.add(chunk.index)
            return False
        return True

    def _upload(self, chunk: ChunkRecord) -> None:
        name = f"{Path(self.m.source).stem}.part{chunk.index + 1:04d}of{len(self.m.chunks):04d}.jsonl"
        with ByteRange(Path(self.m.source), chunk.start, chunk.end) as part:
            uploaded = self.client.upload_stream(
                cast(IO[bytes], part), name, {"purpose": "batch"}, chunk.key(self.m.run_id, "file")
            )
        chunk.file_id, chunk.state = uploaded.id, ChunkState.UPLOADED
        self._save()

    def _create(self, chunk: ChunkRecord) -> None:
        assert chunk.file_id is not None
        found = None
        if chunk.state is ChunkState.CREATING and chunk.index not in self.refused:
            # a create may have landed; an hour's margin for the server's clock
            found = self.client.find_batch(chunk.file_id, self.m.created_at - 3600)
        elif chunk.state is ChunkState.UPLOADED:
            chunk.state = ChunkState.CREATING
            self._save()  # before the create is sent: a resumed run then knows to look for it
        batch = found or self.client.create(
            chunk.file_id, self.m.endpoint, self.m.completion_window, self.m.metadata,
            output_expires_after_s=self.m.output_expires_after_s, idempotency_key=chunk.key(self.m.run_id, "batch"),
        )  # fmt: skip
        chunk.batch_id, chunk.state = batch.id, ChunkState.CREATED
        self.batches[chunk.index] = batch
        self._save()

    # -- following -----------------------------------------------------------------------------------

    def _poll(self) -> None:
        for chunk in self.m.chunks:
            if chunk.state is not ChunkState.CREATED or chunk.batch_id is None:
                continue
            try:
                batch = self.client.get(chunk.batch_id)
            except (httpx2.TransportError, APIError) as error:
                if isinstance(error, APIError) and not error.transient:
                    raise
                continue  # the next round asks again
            self.batches[chunk.index] = batch
            if is_terminal(batch.status):
                self._ended(chunk, batch)

    def _ended(self, chunk: ChunkRecord, batch: Batch) -> None:
        counts = batch.request_counts
        chunk.status, chunk.completed, chunk.failed = batch.status.value, counts.completed, counts.failed
        chunk.output_file_id, chunk.error_file_id = batch.output_file_id, batch.error_file_id
        if batch.status is Status.FAILED:  # nothing ran: every line of the chunk is an error line
            chunk.failed, chunk.errors = chunk.lines, list(batch.errors.data if batch.errors else [])
        chunk.state = ChunkState.ENDED
        self._save()

    def _report(self) -> None:
        if self.progress is None:
            return
        done = failed = ended = 0
        for chunk in self.m.chunks:
            batch = self.batches.get(chunk.index)
            if chunk.state in (ChunkState.ENDED, ChunkState.MERGED):
                ended += 1
                done, failed = done + chunk.completed + chunk.failed, failed + chunk.failed
            elif batch is not None:
                counts = batch.request_counts
                done, failed = done + counts.completed + counts.failed, failed + counts.failed
        total, count = sum(c.lines for c in self.m.chunks), len(self.m.chunks)
        self.progress(BulkProgress(done, failed, total, count, ended, f"{ended}/{count} batches"))

    # -- merging -------------------------------------------------------------------------------------

    def _restore_partials(self) -> None:
        """Cut the partial merged files back to what the manifest says was merged (or start over)."""
        out, err = _partial(self.output), _partial(self.errors)
        intact = _size(out) >= self.m.output_bytes and _size(err) >= self.m.errors_bytes
        if not intact:  # a partial file was lost: merge every ended chunk again
            for chunk in self.m.chunks:
                if chunk.state is ChunkState.MERGED:
                    chunk.state = ChunkState.ENDED
            self.m.output_bytes = self.m.errors_bytes = 0
            self._save()
        for path, size in ((out, self.m.output_bytes), (err, self.m.errors_bytes)):
            with open(path, "ab") as handle:
                handle.truncate(size)

    def _merge_ready(self) -> None:
        for chunk in self.m.chunks:
            if chunk.state is ChunkState.ENDED:
                self._merge(chunk)
            elif chunk.state is not ChunkState.MERGED:
                return  # chunk order: a later chunk waits for this one

    def _merge(self, chunk: ChunkRecord) -> None:
        self.m.output_bytes = self._append(self._content(chunk.output_file_id), _partial(self.output))
        errors = self._failed_lines(chunk) if chunk.status == Status.FAILED else self._content(chunk.error_file_id)
        self.m.errors_bytes = self._append(errors, _partial(self.errors))
        chunk.state = ChunkState.MERGED
        self._save()

    def _content(self, file_id: str | None) -> Iterable[bytes]:
        return self.client.iter_content(file_id) if file_id is not None else ()

    def _failed_lines(self, chunk: ChunkRecord) -> Iterator[bytes]:
        """One error line per request of a chunk whose batch failed: its own error, else batch_failed."""
        assert chunk.batch_id is not None
        own = {e.line: (e.code, e.message) for e in chunk.errors or [] if e.line is not None}
        first = next(iter(chunk.errors or []), None)
        why = f" ({first.code}: {first.message})" if first else ""
        failed = ("batch_failed", f"This request was not executed because batch {chunk.batch_id} failed{why}.")
        with ByteRange(Path(self.m.source), chunk.start, chunk.end) as part:
            for number, raw in enumerate(part.lines(), start=1):
                if not raw.strip():
                    continue  # trailing blank lines (in chunks planned before they were left out)
                code, message = own.get(number, failed)
                yield error_line(_custom_id(raw), code, message).data + b"\n"

    @staticmethod
    def _append(blocks: Iterable[bytes], target: Path) -> int:
        with open(target, "ab") as sink:
            for block in blocks:
                sink.write(block)
            sink.flush()
            os.fsync(sink.fileno())
            return sink.tell()

    def _finish(self) -> None:
        _partial(self.output).replace(self.output)
        _partial(self.errors).replace(self.errors)
        self.m.finished = True
        self._save()

    def _final_batches(self) -> list[Batch]:
        batches = []
        for chunk in self.m.chunks:
            batch = self.batches.get(chunk.index)
            if batch is None or not is_terminal(batch.status):
                assert chunk.batch_id is not None
                batch = self.client.get(chunk.batch_id)
            batches.append(batch)
        return batches


def _custom_id(raw: bytes) -> str:
    """A request line's ``custom_id`` ('' when it has none: the split refuses such files)."""
    try:
        found = orjson.loads(raw).get("custom_id")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return found if isinstance(found, str) else ""


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
