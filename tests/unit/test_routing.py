"""Which route serves a request, and whether a whole batch goes to one route."""

from __future__ import annotations

from batchq.domain.routing import Route, batch_route, route_for

ROUTES = [
    Route(name="vllm", url="http://vllm", endpoints=["/v1/chat/completions"], models=["llama"]),
    Route(name="embed", url="http://tei", endpoints=["/v1/embeddings"]),
    Route(name="openai", url="https://api.openai.com"),
]


def test_the_first_matching_route_serves() -> None:
    assert route_for(ROUTES, "/v1/chat/completions", "llama").name == "vllm"  # type: ignore[union-attr]
    assert route_for(ROUTES, "/v1/chat/completions", "gpt-4o").name == "openai"  # type: ignore[union-attr]
    assert route_for(ROUTES[:1], "/v1/embeddings", None) is None


def test_a_batch_has_one_route_when_all_its_lines_share_it() -> None:
    assert batch_route(ROUTES, "/v1/chat/completions", {"llama"}) == "vllm"
    assert batch_route(ROUTES, "/v1/embeddings", {"a", "b", None}) == "embed"


def test_a_batch_over_several_routes_or_none_has_no_route() -> None:
    assert batch_route(ROUTES, "/v1/chat/completions", {"llama", "gpt-4o"}) == ""
    assert batch_route(ROUTES[:1], "/v1/embeddings", {"x"}) == ""
    assert batch_route(ROUTES, "/v1/chat/completions", set()) == ""
