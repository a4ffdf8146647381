"""Resubmitting the lines of an ended batch that did not succeed (``Client.retry``, the dashboard's
Retry button): which batches can be, which lines go, and the new batch's metadata. Pure.

The lines that go are the input lines without a line in the output file: upstream errors, lines
cancelled, expired or lost, and lines that never ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from batchq.domain.models import Batch
from batchq.domain.status import Status, is_terminal

MAX_METADATA_PAIRS = 16  # the OpenAI Batch API's limit


def refusal(batch: Batch) -> str | None:
    """Why ``batch`` cannot be retried (a message for the caller), or None when it can."""
    if not is_terminal(batch.status):
        return f"{batch.id} is {batch.status.value}: retry it once it has ended"
    if batch.status == Status.FAILED:
        return f"{batch.id} failed validation: no line ran; fix the input and submit it again"
    return None


def retry_metadata(batch: Batch) -> dict[str, str] | None:
    """The batch's metadata plus ``retry_of``, when the 16 pairs allowed leave room for it."""
    metadata = dict(batch.metadata or {})
    if "retry_of" in metadata or len(metadata) < MAX_METADATA_PAIRS:
        metadata["retry_of"] = batch.id
    return metadata or None


def succeeded(output_lines: Iterable[dict[str, Any]]) -> set[str]:
    """The ``custom_id``s of an output file's lines."""
    return {str(line["custom_id"]) for line in output_lines if "custom_id" in line}


def unfinished(input_rows: Iterable[dict[str, Any]], done: set[str]) -> Iterator[dict[str, Any]]:
    """The input rows whose ``custom_id`` is not among ``done``, in input order."""
    return (row for row in input_rows if str(row.get("custom_id")) not in done)
