"""Calling Lua scripts with named keys and arguments.

A call is made of parts (``Call``: a dict of keys and a dict of arguments). ``Script.run`` passes
every part's keys in ``KEYS`` and one JSON document in ``ARGV[1]`` that names them; the Lua
``part(name)`` helper (``PREAMBLE``) gives each step its own ``k.batch``, ``a.index``… So a script
can fold several steps (a line, its limiter slot, the scheduler) into one round trip without
positional slicing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import redis


@dataclass(frozen=True)
class Call:
    """The named keys and arguments of one part of a script call."""

    keys: dict[str, str]
    args: dict[str, Any] = field(default_factory=dict)


PREAMBLE = """
local spec = cjson.decode(ARGV[1])
local function part(name)
  local p = spec[name]
  if p == nil then return nil, nil end
  local k = {}
  for key_name, i in pairs(p.k) do k[key_name] = KEYS[i] end
  for arg_name, i in pairs(p.b) do p.a[arg_name] = ARGV[i] end
  return k, p.a
end
"""


def encode(parts: dict[str, Call]) -> tuple[list[str], list[bytes]]:
    """``KEYS`` and ``ARGV`` for a call made of named parts.

    Bytes arguments (a stored result line) travel as ARGV entries of their own, not inside the
    JSON document, so Redis never parses a response body.
    """
    flat: list[str] = []
    blobs: list[bytes] = []
    spec: dict[str, Any] = {}
    for name, call in parts.items():
        index = {}
        for key_name, key in call.keys.items():
            flat.append(key)
            index[key_name] = len(flat)
        plain = {n: v for n, v in call.args.items() if not isinstance(v, bytes)}
        blob_index = {}
        for arg_name, value in call.args.items():
            if isinstance(value, bytes):
                blobs.append(value)
                blob_index[arg_name] = len(blobs) + 1  # ARGV[1] is the document itself
        spec[name] = {"k": index, "a": plain, "b": blob_index}
    return flat, [orjson.dumps(spec), *blobs]


class Script:
    """A registered script whose parts are passed by name."""

    def __init__(self, client: redis.Redis, body: str) -> None:
        self._script = client.register_script(PREAMBLE + body)

    def run(self, parts: dict[str, Call], client: Any = None) -> Any:
        keys_, args = encode(parts)
        return self._script(keys=keys_, args=args, client=client)
