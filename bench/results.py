"""What the benchmarks check of a finished batch's files, through the API."""

from __future__ import annotations

import httpx2
import orjson


def exactly_once(api: httpx2.Client, batch: dict[str, object], lines: int) -> bool:
    """Every line ``l0`` … ``l{lines-1}`` is in the output or the error file, and only once."""
    seen: list[str] = []
    for key in ("output_file_id", "error_file_id"):
        file_id = batch.get(key)
        if file_id:
            content = api.get(f"/files/{file_id}/content").content
            seen += [orjson.loads(line)["custom_id"] for line in content.splitlines() if line.strip()]
    return sorted(seen) == sorted(f"l{i}" for i in range(lines))
