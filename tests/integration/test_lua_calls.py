"""Named script arguments (batchq/storage/lua.py): every kind arrives in Lua as it left Python."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
import redis

from batchq.storage import lua
from batchq.storage.lua import Call, Script

pytestmark = pytest.mark.integration

ECHO = """
local k, a = part('one')
local absent_k, absent_a = part('absent')
local k2, a2 = part('two')
return cjson.encode({
  key = k.key, other = k2.other, int = a.int, float = a.float, text = a.text, blob = a.blob,
  list = a.list, yes = a.yes, int_is_number = type(a.int) == 'number', digits_stay_text = a.digits,
  absent = absent_k == nil and absent_a == nil, quote = a2['it\\'s'],
})
"""


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def test_each_kind_of_argument_arrives_as_it_was_sent(client: redis.Redis) -> None:
    one = Call({"key": "k:1"}, {"int": 7, "float": 0.1, "text": "héllo", "blob": b"{}", "list": [1, 2], "yes": True})
    one.args["digits"] = "0123"  # a string of digits stays a string (a token may look like a number)
    two = Call({"other": "k:2"}, {"it's": "q"})
    reply = Script(client, ECHO).run({"one": one, "two": two})
    assert orjson.loads(reply) == {
        "key": "k:1", "other": "k:2", "int": 7, "float": 0.1, "text": "héllo", "blob": "{}", "list": [1, 2],
        "yes": True, "int_is_number": True, "digits_stay_text": "0123", "absent": True, "quote": "q",
    }  # fmt: skip


def test_a_script_keeps_one_variant_per_shape_and_runs_past_the_limit(client: redis.Redis) -> None:
    script = Script(client, "local k, a = part('p') return a.n")
    for n in range(lua.MAX_SHAPES + 3):
        assert script.run({"p": Call({}, {f"x{n}": 1, "n": n})}) == n
    assert script.run({"p": Call({}, {"x0": 2, "n": 5})}) == 5  # a known shape, new values
    assert len(script._variants) == lua.MAX_SHAPES


def test_grouped_calls_from_many_threads_each_get_their_own_reply(client: redis.Redis) -> None:
    script = Script(client, "local k, a = part('p') redis.call('INCR', k.counter) return a.n * 2", grouped_calls=True)
    client.delete("grouped:counter")
    with ThreadPoolExecutor(16) as pool:
        replies = list(
            pool.map(lambda n: script.run({"p": Call({"counter": "grouped:counter"}, {"n": n})}), range(400))
        )
    assert replies == [n * 2 for n in range(400)]
    assert int(client.get("grouped:counter") or 0) == 400  # each call ran once


def test_a_grouped_call_that_fails_fails_alone(client: redis.Redis) -> None:
    script = Script(client, "local k, a = part('p') if a.n == 3 then error('three') end return a.n", grouped_calls=True)
    outcomes: list[object] = []

    def one(n: int) -> None:
        try:
            outcomes.append(script.run({"p": Call({}, {"n": n})}))
        except redis.ResponseError as exc:
            outcomes.append("three" in str(exc))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))
    assert sorted(outcomes, key=str) == sorted([0, 1, 2, True, 4, 5, 6, 7], key=str)


def test_grouped_calls_load_the_scripts_redis_lost(client: redis.Redis) -> None:
    script = Script(client, "local k, a = part('p') return a.n", grouped_calls=True)
    assert script.run({"p": Call({}, {"n": 1})}) == 1
    client.script_flush()  # as after a restart without the scripts
    group = lua.grouped(client)
    variant = script.variant(lua.shape_of({"p": Call({}, {"n": 1})}))
    jobs = [lua._Job(variant, [], ["5"]), lua._Job(variant, [], ["6"])]
    lua._send(client, jobs)  # a group of two: one pipeline, NOSCRIPT, loaded, again
    assert [job.outcome() for job in jobs] == [5, 6]
    assert group is lua.grouped(client)
