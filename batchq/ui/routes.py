"""The dashboard's pages. Each handler reads the signed-in identity, calls the same service
functions and stores as the API (so scoping is the API's: another owner's id answers 404), and
renders a template. Errors become friendly pages, never JSON and never a 500 on user input."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from batchq import upgrade
from batchq.api.deps import authenticate, check_user
from batchq.api.deps import get_runtime as runtime
from batchq.api.errors import translate
from batchq.api.multipart import receive_upload
from batchq.domain.models import Batch, Owner, Page, page_of
from batchq.domain.status import Status, is_cancellable, is_terminal
from batchq.errors import AuthenticationFailed, BatchqError, InvalidRequest, NewerSchema, NotFound
from batchq.observability.overview import BatchRow, eta_s, rate
from batchq.runtime import Runtime, TaskQueue
from batchq.services import batches, files
from batchq.services.retry import retry_failed
from batchq.storage import keys
from batchq.storage.batches import _from_hash, page_ids  # a get_many belongs in BatchStore
from batchq.ui import operators, shape
from batchq.ui.headers import SecurityHeaders
from batchq.ui.session import Identity, Session, Sessions, csrf_ok, identify, key_digest, new_session

HERE = Path(__file__).parent
PER_PAGE = 50
MAX_PER_PAGE = 1000
SCAN_LIMIT = 5000  # batches a filtered list reads before it offers "next"
FAILURE_LINES = 50_000  # error-file lines read to group failures
NOTICES = {
    "cancelling": "Cancelling: lines already sent finish, the rest are marked batch_cancelled.",
    "retry_none": "Every line of this batch succeeded: there is nothing to retry.",
    "deleted": "File deleted.",
    "signed_out": "Signed out.",
}
log = logging.getLogger("batchq.ui")


class SignInNeeded(Exception):
    pass


class UiRoute(APIRoute):
    """Turns errors into pages: sign-in redirects, batchq errors and bad parameters."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInNeeded:
                if request.url.path.endswith("/live"):
                    return HTMLResponse("Signed out.", status_code=401)
                return RedirectResponse("/ui/signin", status_code=303)
            except RequestValidationError:
                return error_page(request, 400, "That request was not understood.")
            except Exception as exc:  # batchq's errors, and Redis unreachable or a full disk (the API's translation)
                mapped = translate(exc)
                if mapped is None:
                    raise
                if isinstance(mapped, NewerSchema):  # a newer release's data: this process stops
                    upgrade.stop_outdated(mapped)
                return error_page_of(request, mapped)

        return guarded


router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)
templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True), auto_reload=False
)
templates.filters.update(when=shape.when, iso=shape.iso, span=shape.span)


def mount(app: FastAPI, secret: str) -> None:
    app.state.ui_sessions = Sessions(secret)
    app.state.ui_history = operators.History()
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")  # before the catch-all
    app.include_router(router)
    app.add_middleware(SecurityHeaders)


# --- plumbing ------------------------------------------------------------------------------------


def sessions(request: Request) -> Sessions:
    found: Sessions = request.app.state.ui_sessions
    return found


def signed_in(request: Request) -> Identity:
    rt = runtime(request)
    who = identify(rt, sessions(request).read(request))
    if who is None:
        raise SignInNeeded
    request.state.identity = who
    rt.quotas.count_request(who.owner.account)
    return who


Me = Annotated[Identity, Depends(signed_in)]


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    who: Identity | None = getattr(request.state, "identity", None)
    notice = NOTICES.get(request.query_params.get("notice", ""))
    base = {"me": who, "csrf": who.session.csrf if who else context.pop("csrf", ""), "notice": notice}
    html = templates.get_template(name).render(base | context, path=request.url.path)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status=status, status_code=status, message=message)


def error_page_of(request: Request, exc: BatchqError) -> HTMLResponse:
    page = error_page(request, exc.status_code, exc.message)
    if exc.retry_after is not None:
        page.headers["Retry-After"] = str(exc.retry_after)
    return page


def go(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def checked_form(request: Request, me: Identity) -> dict[str, str]:
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not csrf_ok(me.session, fields.get("csrf")):
        raise InvalidRequest("This form has expired: reload the page and try again.")
    return fields


# --- sign in and out -----------------------------------------------------------------------------


@router.get("")
@router.get("/")
def home() -> RedirectResponse:
    return go("/ui/batches")


@router.get("/signin")
def signin_page(request: Request) -> HTMLResponse:
    return _signin_form(request)


def _signin_form(request: Request, error: str | None = None, status: int = 200, user: str = "") -> HTMLResponse:
    fresh = new_session()
    response = render(request, "signin.html", status=status, csrf=fresh.csrf, error=error, user=user)
    sessions(request).write(response, fresh, secure=request.url.scheme == "https")
    return response


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await request.form()
    key, user = str(form.get("key") or "").strip(), str(form.get("user") or "").strip()
    if not csrf_ok(sessions(request).read(request), form.get("csrf")):
        return _signin_form(request, "The sign-in form expired: please try again.", 400, user)
    try:
        authenticate(runtime(request), "Bearer " + key)
        check_user(user or None)
    except (AuthenticationFailed, InvalidRequest) as exc:
        return _signin_form(request, exc.message, exc.status_code, user)
    response = go("/ui/batches")
    sessions(request).write(response, new_session(key_digest(key), user or None), request.url.scheme == "https")
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    session = sessions(request).read(request)
    form = await request.form()
    if session is not None and not csrf_ok(session, form.get("csrf")):
        raise InvalidRequest("This form has expired: reload the page and try again.")
    response = go("/ui/signin?notice=signed_out")
    response.delete_cookie("batchq_ui", path="/ui")
    return response


# --- batches ------------------------------------------------------------------------------------


@router.get("/batches")
def batches_page(request: Request, me: Me) -> HTMLResponse:
    q = request.query_params
    status = q.get("status", "") if q.get("status", "") in {s.value for s in Status} else ""
    query, after = q.get("q", "")[:200].strip(), q.get("after", "")[:100] or None
    limit = _int(q.get("limit"), PER_PAGE, 1, MAX_PER_PAGE)
    page = find_batches(runtime(request), me.owner, status, query, after, limit)
    rows = [(b, shape.progress(b)) for b in page.data]
    filters = {"status": status, "q": query, "limit": limit if limit != PER_PAGE else None}
    return render(
        request, "batches.html", page=page, rows=rows, filters=filters, statuses=[s.value for s in Status],
        after=after,
    )  # fmt: skip


def _int(raw: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(high, max(low, int(raw))) if raw else default
    except ValueError:
        return default


def find_batches(rt: Runtime, owner: Owner, status: str, query: str, after: str | None, limit: int) -> Page[Batch]:
    """Newest first; with a filter, reads pages until ``limit`` match (or ``SCAN_LIMIT`` were read)."""
    if not status and not query:
        return batch_page_of(rt, owner, after, limit)
    found: list[Batch] = []
    cursor, scanned = after, 0
    while scanned < SCAN_LIMIT:
        page = batch_page_of(rt, owner, cursor, 500)
        for batch in page.data:
            scanned, cursor = scanned + 1, batch.id
            if shape.matches(batch, status, query):
                found.append(batch)
            if len(found) > limit:
                return Page[Batch](data=found[:limit], first_id=found[0].id, last_id=found[limit - 1].id, has_more=True)
        if not page.has_more:
            return Page[Batch](data=found, has_more=False, last_id=cursor)
    return Page[Batch](data=found, has_more=True, last_id=cursor)


def batch_page_of(rt: Runtime, owner: Owner, after: str | None, limit: int) -> Page[Batch]:
    """``BatchStore.page`` in one pipelined read (it reads batch by batch: 1,000 round trips for 1,000)."""
    ids = page_ids(rt.redis, keys.owner_batches(owner.key), after, limit)
    pipe = rt.redis.pipeline(transaction=False)
    for batch_id in ids[:limit]:
        pipe.hgetall(keys.batch(batch_id))
    batches = [_from_hash(raw) for raw in pipe.execute() if raw]
    return page_of(batches, len(ids) > limit, lambda b: b.id)


@router.get("/batches/{batch_id}")
def batch_page(request: Request, batch_id: str, me: Me) -> HTMLResponse:
    return render(request, "batch.html", **batch_context(runtime(request), me.owner, batch_id))


@router.get("/batches/{batch_id}/live")
def batch_live(request: Request, batch_id: str, me: Me) -> HTMLResponse:
    """The part of the batch page that changes: one small request every few seconds."""
    return render(request, "_live.html", **batch_context(runtime(request), me.owner, batch_id))


def batch_context(rt: Runtime, owner: Owner, batch_id: str) -> dict[str, Any]:
    batch = rt.batches.get_owned(batch_id, owner)
    failures = failures_of(rt, owner, batch) if is_terminal(batch.status) else []
    return {
        "batch": batch, "progress": shape.progress(batch), "timeline": shape.timeline(batch), "failures": failures,
        "terminal": is_terminal(batch.status), "cancellable": is_cancellable(batch.status),
        "retryable": is_terminal(batch.status) and batch.status != Status.FAILED,
    }  # fmt: skip


def failures_of(rt: Runtime, owner: Owner, batch: Batch) -> list[shape.FailureGroup]:
    if batch.error_file_id is None:
        return []
    try:
        rt.files.get(batch.error_file_id, owner)
        return shape.group_failures(_read_lines(rt.files.path(batch.error_file_id), FAILURE_LINES))
    except (NotFound, OSError):
        return []


def _read_lines(path: Path, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        for raw in handle:
            if len(rows) >= limit:
                break
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


@router.get("/batches/{batch_id}/cancel")
def cancel_page(request: Request, batch_id: str, me: Me) -> HTMLResponse:
    batch = runtime(request).batches.get_owned(batch_id, me.owner)
    return render(
        request, "confirm.html", title=f"Cancel {batch.id}?", action=f"/ui/batches/{batch.id}/cancel",
        message="Lines already sent finish; every other line is marked batch_cancelled. This cannot be undone.",
        button="Cancel batch", back=f"/ui/batches/{batch.id}",
    )  # fmt: skip


@router.post("/batches/{batch_id}/cancel")
async def cancel(request: Request, batch_id: str, me: Me) -> Response:
    await checked_form(request, me)
    rt, queue = runtime(request), _queue(request)
    batch = await run_in_threadpool(batches.cancel_batch, rt, queue, me.owner, batch_id)
    return go(f"/ui/batches/{batch.id}?notice=cancelling")


def _queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.queue
    return queue


@router.post("/batches/{batch_id}/retry")
async def retry(request: Request, batch_id: str, me: Me) -> Response:
    await checked_form(request, me)
    created = await run_in_threadpool(retry_failed, runtime(request), _queue(request), me.owner, batch_id)
    return go(f"/ui/batches/{created.id}" if created else f"/ui/batches/{batch_id}?notice=retry_none")


# --- new batch -----------------------------------------------------------------------------------


@router.get("/new")
def new_page(request: Request, me: Me) -> HTMLResponse:
    return _new_form(request)


def _new_form(request: Request, error: str | None = None, status: int = 200, **values: str) -> HTMLResponse:
    s = runtime(request).settings
    defaults = {"endpoint": s.endpoints[0] if s.endpoints else "", "window": "24h", "metadata": ""}
    return render(
        request, "new.html", status=status, error=error, endpoints=s.endpoints, values=defaults | values,
        windows=["1h", "24h", "7d"],
    )  # fmt: skip


@router.post("/new")
async def create(request: Request, me: Me) -> Response:
    rt = runtime(request)
    temp = rt.files.temp_path()
    try:
        upload = await receive_upload(request, temp, rt.settings.max_file_bytes)
    except InvalidRequest as exc:
        return _new_form(request, exc.message, exc.status_code)
    fields = upload.fields
    values = {k: fields.get(k, "") for k in ("endpoint", "window", "metadata")}
    if not csrf_ok(me.session, fields.get("csrf")):
        temp.unlink(missing_ok=True)
        return _new_form(request, "This form has expired: please choose the file again.", 400, **values)
    try:
        batch = await run_in_threadpool(_create, rt, _queue(request), me.owner, upload.filename, temp, values)
    except InvalidRequest as exc:
        return _new_form(request, exc.message, exc.status_code, **values)
    return go(f"/ui/batches/{batch.id}")


def _create(rt: Runtime, queue: TaskQueue, owner: Owner, filename: str, temp: Path, values: dict[str, str]) -> Batch:
    try:
        metadata = shape.parse_metadata(values["metadata"])
    except InvalidRequest:
        temp.unlink(missing_ok=True)
        raise
    stored = files.accept_upload(rt, owner, files.Upload("batch", filename, temp))
    try:
        request = batches.NewBatch(stored.id, values["endpoint"], values["window"].strip() or "24h", metadata)
        return batches.create_batch(rt, queue, owner, request)
    except BatchqError:
        rt.files.delete(stored.id, owner)  # nothing reads it: do not leave it behind
        raise


# --- files ---------------------------------------------------------------------------------------


@router.get("/files")
def files_page(request: Request, me: Me) -> HTMLResponse:
    after = request.query_params.get("after", "")[:100] or None
    page = runtime(request).files.page(me.owner, after, PER_PAGE, None, "desc")
    return render(request, "files.html", page=page, after=after)


@router.get("/files/{file_id}/content")
def download(request: Request, file_id: str, me: Me) -> FileResponse:
    rt = runtime(request)
    meta = rt.files.get(file_id, me.owner)
    return FileResponse(rt.files.path(file_id), media_type="application/jsonl", filename=meta.filename)


@router.get("/files/{file_id}/delete")
def delete_page(request: Request, file_id: str, me: Me) -> HTMLResponse:
    meta = runtime(request).files.get(file_id, me.owner)
    return render(
        request, "confirm.html", title=f"Delete {meta.filename}?", action=f"/ui/files/{meta.id}/delete",
        message=f"{meta.id} ({meta.bytes:,} bytes) is deleted for good.", button="Delete file", back="/ui/files",
    )  # fmt: skip


@router.post("/files/{file_id}/delete")
async def delete(request: Request, file_id: str, me: Me) -> Response:
    await checked_form(request, me)
    await run_in_threadpool(files.delete_file, runtime(request), me.owner, file_id)
    return go("/ui/files?notice=deleted")


# --- operators -----------------------------------------------------------------------------------


@router.get("/operators")
def operators_page(request: Request, me: Me) -> HTMLResponse:
    return render(request, "operators.html", **operators_context(request, me))


@router.get("/operators/live")
def operators_live(request: Request, me: Me) -> HTMLResponse:
    return render(request, "_operators.html", **operators_context(request, me))


def operators_context(request: Request, me: Identity) -> dict[str, Any]:
    if not me.admin:
        raise NotFound("No such page.")
    rt = runtime(request)
    snapshot = operators.snapshot(rt)
    routes, totals = operators.route_states(rt, snapshot.in_flight)
    samples = request.app.state.ui_history.add(snapshot.at, totals.stored)
    rows = [(row, shape.span(_eta(row, snapshot.at))) for row in snapshot.batches]
    return {"snap": snapshot, "rows": rows, "routes": routes, "totals": totals, "chart": shape.chart(samples)}


def _eta(row: BatchRow, now: float) -> float | None:
    return eta_s(row, rate(row, now))


@router.get("/{rest:path}")
def not_found(request: Request, rest: str) -> HTMLResponse:
    request.state.identity = identify(runtime(request), sessions(request).read(request))
    return error_page(request, 404, "There is no such page.")


__all__ = ["Session", "mount", "router"]
