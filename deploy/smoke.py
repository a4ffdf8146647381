"""One batch end to end through a running deployment, with nothing but the standard library.

    python3 deploy/smoke.py --api http://127.0.0.1:8000 --key sk-... [--flower http://127.0.0.1:5555]

Uploads a small JSONL file, creates a /v1/chat/completions batch, waits for it to complete, reads its
output file (every line answered), checks that the API's /metrics answers and, with --flower, that
Flower reports an online worker. Run by deploy/check.sh against the compose stack and its mock upstream.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
import uuid
from typing import Any


def call(method: str, url: str, key: str | None = None, body: bytes | None = None, ctype: str = "") -> bytes:
    request = urllib.request.Request(url, data=body, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if ctype:
        request.add_header("Content-Type", ctype)
    with urllib.request.urlopen(request, timeout=30) as response:
        data: bytes = response.read()
        return data


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    disposition = '--{}\r\nContent-Disposition: form-data; name="{}"\r\n\r\n{}\r\n'
    parts = [disposition.format(boundary, k, v).encode() for k, v in fields.items()]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n".encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def run_batch(api: str, key: str, lines: int, timeout_s: float) -> dict[str, Any]:
    requests = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "mock", "messages": [{"role": "user", "content": f"hello {i}"}]},
        }
        for i in range(lines)
    ]
    body, ctype = multipart({"purpose": "batch"}, "smoke.jsonl", "\n".join(map(json.dumps, requests)).encode() + b"\n")
    uploaded = json.loads(call("POST", f"{api}/v1/files", key, body, ctype))
    create = {"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch = json.loads(call("POST", f"{api}/v1/batches", key, json.dumps(create).encode(), "application/json"))
    deadline = time.monotonic() + timeout_s
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        if time.monotonic() > deadline:
            raise SystemExit(f"batch {batch['id']} still {batch['status']} after {timeout_s:.0f} s")
        time.sleep(1)
        batch = json.loads(call("GET", f"{api}/v1/batches/{batch['id']}", key))
    if batch["status"] != "completed":
        raise SystemExit(f"batch {batch['id']} ended {batch['status']}: {batch}")
    output = call("GET", f"{api}/v1/files/{batch['output_file_id']}/content", key).decode().splitlines()
    answered = {json.loads(line)["custom_id"] for line in output if json.loads(line)["response"]["status_code"] == 200}
    if answered != {r["custom_id"] for r in requests}:
        raise SystemExit(f"batch {batch['id']}: {len(answered)} of {lines} lines answered 200")
    return batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--flower", help="Flower's URL: check that it sees an online worker")
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()

    started = time.monotonic()
    batch = run_batch(args.api, args.key, args.lines, args.timeout)
    print(f"smoke: batch {batch['id']} completed, {args.lines} lines, in {time.monotonic() - started:.1f} s")

    metrics = call("GET", f"{args.api}/metrics").decode()
    if "batchq_lines_waiting" not in metrics:
        raise SystemExit("smoke: the API's /metrics has no batchq_lines_waiting")
    print("smoke: the API's /metrics answers (batchq_lines_waiting present)")

    if args.flower:
        deadline = time.monotonic() + 60
        while True:
            online = [
                line
                for line in call("GET", f"{args.flower}/metrics").decode().splitlines()
                if line.startswith("flower_worker_online{") and line.endswith(" 1.0")
            ]
            if online:
                break
            if time.monotonic() > deadline:
                raise SystemExit("smoke: Flower reports no online worker after 60 s")
            time.sleep(2)
        print(f"smoke: Flower sees {len(online)} worker(s): {', '.join(online)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
