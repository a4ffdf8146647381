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

The package: ``errors`` (the exceptions), ``common`` (every decision both clients share), ``sync``
(``Client``), ``aio`` (``AsyncClient``), and for jobs larger than one batch ``bulk`` (split, submit,
follow, merge, resume), ``split``, ``manifest``; ``cursorfile`` keeps ``batchq results``' place.
"""

from batchq.client.aio import AsyncClient
from batchq.client.common import (
    CURSOR_HEADER,
    DEFAULT_API_URL,
    MORE_HEADER,
    STATUS_HEADER,
    ResultsPage,
    create_backoff,
    new_idempotency_key,
)  # fmt: skip
from batchq.client.errors import APIError, ClientError
from batchq.client.sync import Client
from batchq.domain.models import Batch, FileObject, Page

__all__ = [
    "CURSOR_HEADER",
    "DEFAULT_API_URL",
    "MORE_HEADER",
    "STATUS_HEADER",
    "APIError",
    "AsyncClient",
    "Batch",
    "Client",
    "ClientError",
    "FileObject",
    "Page",
    "ResultsPage",
    "create_backoff",
    "new_idempotency_key",
]
