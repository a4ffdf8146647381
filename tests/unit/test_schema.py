"""Schema versions, without Redis: what a record or message says, and what this code does with it."""

from __future__ import annotations

import orjson
import pytest

from batchq.errors import NewerSchema, Unavailable
from batchq.storage import schema
from workers.publish import line_messages


def test_no_schema_is_what_0_1_0_wrote_and_every_known_one_is_read() -> None:
    assert schema.of(None) == schema.of(b"") == 1
    assert schema.of(b"2") == schema.of("2") == schema.of(2) == 2
    for known in range(1, schema.SCHEMA + 1):
        schema.check(str(known).encode(), "batch b")


def test_a_newer_schema_is_a_503_naming_what_and_how_to_fix_it() -> None:
    with pytest.raises(NewerSchema) as raised:
        schema.check(str(schema.SCHEMA + 1), "batch batch_1")
    error = raised.value
    assert isinstance(error, Unavailable) and error.status_code == 503 and error.code == "newer_schema"
    assert f"found batch batch_1 of schema {schema.SCHEMA + 1}" in error.message
    assert error.message.endswith("upgrade this process")


def test_line_messages_carry_the_schema_in_a_header_older_workers_ignore() -> None:
    (message,) = line_messages("batchq.line", [("b", 0, 0, 1)], "batchq.lines")
    headers = orjson.loads(message)["headers"]
    assert headers[schema.HEADER] == schema.SCHEMA and headers["task"] == "batchq.line"


def test_records_are_written_with_the_schema_field() -> None:
    assert schema.written() == {"schema": schema.SCHEMA}
