"""The FastAPI application factory. Nothing is configured at import time."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi

from batchq import __version__, ui
from batchq.api import errors
from batchq.api.deps import PREFIXES
from batchq.api.routes import batches, files, results, uploads
from batchq.observability.metrics import api_registry, render_api_metrics
from batchq.runtime import Runtime, TaskQueue
from batchq.storage.redis_client import ping


def openapi_without_422(app: FastAPI) -> dict[str, Any]:
    """FastAPI documents a 422 on every operation; batchq answers validation errors with 400."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for operation in (op for path in schema["paths"].values() for op in path.values()):
            operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(runtime: Runtime, queue: TaskQueue) -> FastAPI:
    app = FastAPI(title="batchq", version=__version__)
    app.state.runtime = runtime
    app.state.queue = queue
    for prefix in PREFIXES:
        app.include_router(files.router, prefix=prefix)
        app.include_router(results.router, prefix=prefix)  # before batches: /batches/limits is no batch id
        app.include_router(batches.router, prefix=prefix)
        app.include_router(uploads.router, prefix=prefix)
    errors.install(app)
    ui.install(app)
    app.openapi = functools.partial(openapi_without_422, app)  # type: ignore[method-assign]

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """Ready to serve: answers 200 only while Redis does (a readiness check), and while Redis
        and the data directory belong to the same deployment (else 503 saying what differs)."""
        await run_in_threadpool(ping, runtime.redis)
        await run_in_threadpool(runtime.deployment.guard)
        return {"status": "ok", "version": __version__}

    @app.get("/livez", tags=["operations"])
    async def livez() -> dict[str, str]:
        """The process is serving requests; touches nothing else (a liveness check)."""
        return {"status": "ok"}

    registry = api_registry(runtime.redis, [route.name for route in runtime.settings.routes()])

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = await run_in_threadpool(render_api_metrics, registry)
        return Response(body, media_type=content_type)

    return app
