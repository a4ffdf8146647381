"""What the server accepts: ``GET /batches/limits``, so clients (``batchq submit``) can split input to fit."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Limits(BaseModel):
    """The server's limits. 0 means no limit for the per-key ones."""

    object: Literal["batchq.limits"] = "batchq.limits"
    max_requests_per_batch: int  # BATCHQ_MAX_LINES
    max_file_bytes: int  # BATCHQ_MAX_FILE_BYTES: an upload (an input file) at most
    max_line_bytes: int  # BATCHQ_MAX_LINE_BYTES: one input line at most
    endpoints: list[str]  # the endpoints a batch may target
    min_completion_window: str
    max_completion_window: str
    max_active_batches_per_key: int  # batches not yet ended, per API key
    max_enqueued_requests_per_key: int  # input lines in those batches, per API key
    requests_per_minute_per_key: int  # API requests
    max_results_page_lines: int  # GET /batches/{id}/results?limit=
    max_results_page_bytes: int  # a page holds more only when its first line alone is larger
