"""The ``batchq`` command: argument parsing only; every command delegates to one function."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx2
import orjson
import typer
import typer.core
from pydantic import BaseModel
from rich.live import Live
from rich.table import Table
from rich.text import Text

from batchq import __version__, views
from batchq.client import Client, ClientError, ResultsPage
from batchq.client.bulk import BulkRequest, default_errors_path, submit_many
from batchq.client.cursorfile import CursorFile, fileno
from batchq.config import Settings
from batchq.domain.models import Batch, page_of
from batchq.domain.status import Status, is_terminal
from batchq.storage.apikeys import ApiKeyStore
from batchq.views import ERR, OUT

app = typer.Typer(help="batchq: an OpenAI-compatible Batch API on Celery workers over Redis.", no_args_is_help=True)
batches_app = typer.Typer(help="List, inspect and cancel batches.", no_args_is_help=True)
files_app = typer.Typer(help="List, inspect, download and delete files.", no_args_is_help=True)
app.add_typer(batches_app, name="batches")
app.add_typer(files_app, name="files")
keys_app = typer.Typer(help="Manage API keys (talks to Redis directly).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _print_version(asked: bool) -> None:
    if asked:
        OUT.print(f"batchq {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """batchq: an OpenAI-compatible Batch API on Celery workers over Redis."""


ApiUrl = Annotated[
    str | None,
    typer.Option(envvar="BATCHQ_API_URL", show_default=False, help="API origin, e.g. http://127.0.0.1:8000."),
]
ApiKey = Annotated[str | None, typer.Option(envvar="BATCHQ_API_KEY", show_default=False, help="API key (Bearer).")]
OnBehalfOf = Annotated[
    str | None,
    typer.Option(envvar="BATCHQ_ON_BEHALF_OF", show_default=False, help="Act for this end user (X-On-Behalf-Of)."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print plain JSON on stdout (for scripts).")]
Wait = Annotated[bool, typer.Option("--wait", help="Show progress until the batch ends, then download.")]
OutputPath = Annotated[
    Path | None, typer.Option("--output", help="Output file (default: <batch>_output.jsonl).", show_default=False)
]
ErrorsPath = Annotated[
    Path | None, typer.Option("--errors", help="Error file (default: <batch>_errors.jsonl).", show_default=False)
]
PollInterval = Annotated[float, typer.Option(help="Seconds between status polls.")]


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn), logging at BATCHQ_LOG_LEVEL."""
    import uvicorn

    from batchq.config import get_settings

    require_redis("api")
    uvicorn.run(
        "batchq.api.main:app",
        host=host,
        port=port,
        workers=workers,
        log_level=uvicorn_level(get_settings().log_level),
        access_log=False,
        log_config=None,  # uvicorn's loggers propagate to the root logger: JSON like the rest
    )


@app.command(context_settings=PASSTHROUGH)
def worker(ctx: typer.Context) -> None:
    """Run a Celery worker; extra options go to ``celery worker`` (e.g. --concurrency 64)."""
    require_redis("worker")
    from workers import app as celery_app

    celery_app.worker_main(["worker", *ctx.args])


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the API listens on.")] = 8000,
    concurrency: Annotated[int, typer.Option(min=1, help="Threads of the one worker (requests in flight).")] = 32,
    stop_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds a stop takes at most, in all (lines cut off run again next start).")
    ] = 30.0,
) -> None:
    """Everything on one machine: Redis (embedded, with an append-only file under BATCHQ_DATA_DIR,
    unless BATCHQ_REDIS_URL answers), the API and one worker with the watchdog. Ctrl-C or SIGTERM
    stops them all; started again after a crash or a reboot, it resumes every unfinished batch."""
    from batchq.local.serve import Supervisor, run_serve

    supervisor = Supervisor(_settings(), host=host, port=port, concurrency=concurrency, stop_timeout=stop_timeout)
    raise typer.Exit(run_serve(supervisor))


@app.command()
def scheduler() -> None:
    """Run only the periodic watchdog (expiry, stuck batches, lost lines). Workers run it too."""
    require_redis("scheduler")
    from workers.tasks import run_scheduler

    run_scheduler()


@app.command()
def deployment(
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt",
            help="Make this Redis and BATCHQ_DATA_DIR one deployment (the side without an id takes the other's).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --adopt, where both have ids and they differ: Redis takes the data's.")
    ] = False,
) -> None:
    """The deployment ids in Redis and in BATCHQ_DATA_DIR, and whether they match (nothing is deleted
    while they differ). --adopt: this Redis takes over the data (it lost its own, or it is new);
    where no Redis answers, the embedded one of BATCHQ_DATA_DIR/redis is started for it."""
    from batchq.config import get_settings
    from batchq.local.embedded import reachable
    from batchq.local.serve import ServeError, embedded_redis

    settings = get_settings()
    if adopt and not reachable(settings.redis_url):
        try:
            with embedded_redis(settings) as url:
                _deployment(settings.model_copy(update={"redis_url": url}), adopt, force)
        except (ServeError, RuntimeError) as error:  # RuntimeError: no redis-server binary
            typer.echo(f"error: batchq deployment: {error}", err=True)
            raise typer.Exit(1) from None
        return
    require_redis("deployment")
    _deployment(settings, adopt, force)


def _deployment(settings: Settings, adopt: bool, force: bool) -> None:
    from batchq.domain.identity import problem as mismatch
    from batchq.domain.redis_url import redact
    from batchq.storage.identity import Deployment, DirMarker
    from batchq.storage.redis_client import connect

    url = redact(settings.redis_url)
    found = Deployment(connect(settings.redis_url, max_connections=2), DirMarker(settings.data_dir), url)
    if adopt:
        typer.echo(f"deployment id in Redis: {found.adopt(force)}")
    sides = found.sides()
    typer.echo(f"redis ({url}): {sides.redis_id or '(none)'}")
    typer.echo(f"data ({found.marker.where}): {sides.marker_id or '(none)'}")
    problem = mismatch(sides, url, found.marker.where)
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1)


@app.command()
def doctor() -> None:
    """Check this deployment as an operator would: Redis (reachable, persistence, maxmemory-policy),
    the data directory (writable, private, free space), every upstream route, and the releases of
    the live API, worker and scheduler processes. One line per finding; exit 1 on a problem (FAIL)."""
    from batchq.doctor import examine, exit_code

    findings = []
    for finding in examine(_settings()):
        typer.echo(finding.line())
        findings.append(finding)
    raise typer.Exit(exit_code(findings))


@app.command("mock-upstream", context_settings=PASSTHROUGH)
def mock_upstream(ctx: typer.Context) -> None:
    """Serve a mock OpenAI-compatible upstream (see --help of python -m batchq.local.mock_upstream)."""
    from batchq.local import mock_upstream as mock

    mock.main(ctx.args)


@app.command()
def demo(
    lines: Annotated[int, typer.Option(help="Requests in the demo batch.")] = 200,
    workdir: Annotated[Path, typer.Option(help="Where logs, data and results go.")] = Path("batchq-demo"),
) -> None:
    """Run a real batch end to end on this machine (starts Redis if none answers) and print where the results are."""
    from batchq.local.demo import run_demo

    raise typer.Exit(run_demo(lines, workdir))


# -- client commands: argument parsing here; all HTTP goes through batchq.client.Client ------------


class _UsageErrorExitsOne(typer.core.TyperCommand):
    """For ``submit``, whose exit code 2 means partial failure: a usage error exits 1, not click's 2."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except Exception as error:  # click's UsageError (typer vendors its own click)
            if getattr(error, "exit_code", None) == 2:
                error.exit_code = 1  # type: ignore[attr-defined]
            raise


@app.command(cls=_UsageErrorExitsOne)
def submit(
    source: Annotated[Path, typer.Argument(help="JSONL file of requests.", show_default=False)],
    endpoint: Annotated[str, typer.Option(help="Endpoint every line targets.")] = "/v1/chat/completions",
    window: Annotated[str, typer.Option(help="Completion window (<n>s|m|h|d).")] = "24h",
    metadata: Annotated[list[str] | None, typer.Option(help="k=v; repeatable.", show_default=False)] = None,
    wait: Wait = False,
    output: OutputPath = None,
    errors: ErrorsPath = None,
    poll_interval: PollInterval = 1.0,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    on_behalf_of: OnBehalfOf = None,
) -> None:
    """Upload SOURCE and create a batch from it; with --wait, follow it and download its results.

    With --output, SOURCE may be of any size: it is split into batches within the server's
    limits (GET /batches/limits), followed with one progress bar and merged into --output and
    --errors (default <output stem>_errors.jsonl), in input-chunk order. A manifest beside the
    output (<output>.batchq-manifest.json) records every batch: run the same command again
    after an interruption and it resumes without submitting any line twice. After a finished
    run, the same command runs the job again (the old manifest is kept, renamed). The file is
    validated as the server would before anything is sent. One run per --output at a time.

    --output/--errors imply --wait. Exit codes:

    0: created (without --wait), or completed with no failed line;
    2: partial failure: completed with some failed lines,
       or cancelled/expired with some lines done;
    1: failure: validation failed, cancelled/expired with no line done,
       or an error (bad arguments, HTTP, I/O);
    130: interrupted while waiting (the batch keeps running).
    """
    pairs = _metadata(metadata or [])
    with _client(api_url, api_key, on_behalf_of) as client:
        if output is not None:
            request = BulkRequest(source, output, errors or default_errors_path(output), endpoint, window, pairs)
            _submit_many(client, request, poll_interval, as_json)
        batch = client.submit(source, endpoint=endpoint, completion_window=window, metadata=pairs)
        ERR.print(f"Created {batch.id} from {source}.")
        _finish(client, batch, _Follow(wait, output, errors, poll_interval), as_json)


@batches_app.command("list")
def batches_list(
    limit: Annotated[int, typer.Option(min=1, max=100, help="Batches per page.")] = 20,
    after: Annotated[str | None, typer.Option(help="Page after this batch id.", show_default=False)] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    on_behalf_of: OnBehalfOf = None,
) -> None:
    """List batches, newest first."""
    with _client(api_url, api_key, on_behalf_of) as client:
        _show(client.list(limit=limit, after=after), as_json, views.batch_table)


@batches_app.command("get")
def batches_get(
    batch_id: str,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    on_behalf_of: OnBehalfOf = None,
) -> None:
    """Show one batch: status, request counts, files, timestamps."""
    with _client(api_url, api_key, on_behalf_of) as client:
        _show(client.get(batch_id), as_json, views.batch_summary)


@batches_app.command("cancel")
def batches_cancel(
    batch_id: str,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    on_behalf_of: OnBehalfOf = None,
) -> None:
    """Cancel a batch (it moves to cancelling, then cancelled with partial results)."""
    with _client(api_url, api_key, on_behalf_of) as client:
        _show(client.cancel(batch_id), as_json, views.batch_summary)


@batches_app.command("retry", cls=_UsageErrorExitsOne)
def batches_retry(
    batch_id: str,
    window: Annotated[
        str | None, typer.Option(help="Completion window (default: the original's).", show_default=False)
    ] = None,
    wait: Wait = False,
    output: OutputPath = None,
    errors: ErrorsPath = None,
    poll_interval: PollInterval = 1.0,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    on_behalf_of: OnBehalfOf = None,
) -> None:
    """Run again only the lines of an ended batch that did not succeed, as a new batch.

    Those are the input lines without a line in its output file (upstream errors; cancelled,
    expired or lost lines; lines that never ran), taken from the original input. The new
    batch's metadata names the old one (retry_of).
    Exit codes as for submit; 0 with nothing created when every line succeeded.
    """
    with _client(api_url, api_key, on_behalf_of) as client:
        batch = client.retry(batch_id, completion_window=window)
        if batch is None:
            ERR.print(f"Every line of {batch_id} succeeded: nothing to retry.")
            raise typer.Exit(0)
        ERR.print(f"Created {batch.id} from the lines of {batch_id} that did not succeed.")
        _finish(client, batch, _Follow(wait, output, errors, poll_interval), as_json)


@app.command()
def results(
    batch_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing lines as they are stored until the batch ends.")
    ] = False,
    after: Annotated[
        str | None, typer.Option(help="Start after this cursor (from a previous run).", show_default=False)
    ] = None,
    cursor_file: Annotated[
        Path | None,
        typer.Option(
            help="Go on from the cursor in this file if it exists; keep it up to date after every page.",
            show_default=False,
        ),
    ] = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    on_behalf_of: OnBehalfOf = None,
) -> None:
    """Print a batch's result lines stored so far as JSONL (output and error lines alike), while it runs.

    Each line once: the cursor after the last line printed goes to stderr (and to --cursor-file);
    pass it to --after to go on from there. Output order: the order lines were stored while the
    batch runs; from its output file, then its error file, once it has ended.

    With --cursor-file and the output appended to a regular file (>> results.jsonl), each line
    is printed exactly once even across kills; on a pipe or a terminal, a kill while a page is
    printed prints that page again in the next run (see batchq.client.cursorfile).
    """
    log = CursorFile(cursor_file, fileno(sys.stdout)) if cursor_file is not None else None
    start = after or _resume(log)
    cursor = start
    with _client(api_url, api_key, on_behalf_of) as client:
        try:
            for page in client.iter_result_pages(batch_id, start, follow=follow):
                _print_page(page, cursor, log)
                cursor = page.cursor
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        finally:
            if cursor:
                ERR.print(f"Next cursor: {cursor} (batchq results {batch_id} --after {cursor})")


def _resume(log: CursorFile | None) -> str | None:
    if log is None:
        return None
    found = log.resume()
    if found.again:
        ERR.print(f"The last page before the stop may be printed again ({log.path} could not tell).")
    return found.cursor


def _print_page(page: ResultsPage, before: str | None, log: CursorFile | None) -> None:
    """Record the page as pending, print and flush it, then record its cursor (``batchq.client.cursorfile``)."""
    if log is not None and page.data:
        log.printing(before, page.cursor, len(page.data))
    sys.stdout.buffer.write(page.data)
    sys.stdout.buffer.flush()
    if log is not None:
        log.printed(page.cursor)


@files_app.command("list")
def files_list(
    purpose: Annotated[str | None, typer.Option(help="Only files of this purpose.", show_default=False)] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Files per page.", show_default=False)] = None,
    order: Annotated[str, typer.Option(help="asc or desc (by creation).")] = "desc",
    after: Annotated[str | None, typer.Option(help="Page after this file id.", show_default=False)] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    on_behalf_of: OnBehalfOf = None,
) -> None:
    """List files."""
    with _client(api_url, api_key, on_behalf_of) as client:
        page = client.list_files(purpose=purpose, limit=limit, order=order, after=after)
        _show(page, as_json, views.file_table)


@files_app.command("get")
def files_get(
    file_id: str,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    on_behalf_of: OnBehalfOf = None,
) -> None:
    """Show one file's metadata."""
    with _client(api_url, api_key, on_behalf_of) as client:
        _show(client.get_file(file_id), as_json, views.fields_table)


@files_app.command("download")
def files_download(
    file_id: str,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to write ('-': stdout; default: <file_id>.jsonl).", show_default=False
        ),
    ] = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    on_behalf_of: OnBehalfOf = None,
) -> None:
    """Download a file's content (streamed)."""
    with _client(api_url, api_key, on_behalf_of) as client:
        if str(output) == "-":
            for chunk in client.iter_content(file_id):
                sys.stdout.buffer.write(chunk)
            return
        target = client.download(file_id, output or Path(f"{file_id}.jsonl"))
        ERR.print(f"Wrote {target}")


@files_app.command("delete")
def files_delete(
    file_id: str,
    as_json: AsJson = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    on_behalf_of: OnBehalfOf = None,
) -> None:
    """Delete a file."""
    with _client(api_url, api_key, on_behalf_of) as client:
        _show(client.delete_file(file_id), as_json, views.fields_table)


Weight = Annotated[
    float,
    typer.Option(min=0.001, max=1000, help="Share of the workers against other keys with work (default 1)."),
]


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key, e.g. the team using it.")],
    weight: Weight = 1.0,
    admin: Annotated[bool, typer.Option("--admin", help="The key also sees the dashboard's operators page.")] = False,
) -> None:
    """Create an API key and print it once; only its SHA-256 is stored."""
    record, secret = _key_store().create(name, weight, admin)
    role = ", admin" if record.admin else ""
    ERR.print(f"Created {record.id} ({record.name}, weight {record.weight:g}{role}).")
    ERR.print("Store the key now: it is not shown again.")
    typer.echo(secret)


@keys_app.command("weight")
def keys_weight(key_id: str, weight: Annotated[float, typer.Argument(min=0.001, max=1000)]) -> None:
    """Change a managed key's weight: its batches get that share from the next line on."""
    record = _key_store().set_weight(key_id, weight)
    if record is None:
        ERR.print(f"error: no key with id {key_id}")
        raise typer.Exit(1)
    ERR.print(f"{key_id} now has weight {record.weight:g}.")


@keys_app.command("list")
def keys_list(as_json: AsJson = False) -> None:
    """List managed API keys (ids, names and key prefixes; never the keys)."""
    records = _key_store().list()
    if as_json:
        typer.echo(orjson.dumps([r.model_dump() for r in records]).decode())
        return
    OUT.print(views.key_table(records))


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a managed API key: requests with it get 401 from now on."""
    if not _key_store().revoke(key_id):
        ERR.print(f"error: no key with id {key_id}")
        raise typer.Exit(1)
    ERR.print(f"Revoked {key_id}.")


@app.command()
def top(
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 2.0,
    as_json: AsJson = False,
) -> None:
    """Every unfinished batch of every tenant, live: progress, rate, ETA (talks to Redis directly)."""
    from batchq.config import get_settings
    from batchq.observability.overview import read_overview
    from batchq.storage.redis_client import connect

    settings = get_settings()
    client = connect(settings.redis_url, max_connections=2)
    routes = [route.name for route in settings.routes()]
    snapshot = read_overview(client, routes)
    if as_json or once:
        time.sleep(1.0)  # a second snapshot: the tenants' rates are counted between the two
        snapshot, previous = read_overview(client, routes), snapshot
        if as_json:
            typer.echo(orjson.dumps(views.overview_json(snapshot, previous)).decode())
        else:
            OUT.print(views.overview_tables(snapshot, previous))
        return
    with Live(views.overview_tables(snapshot), console=OUT, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                snapshot, previous = read_overview(client, routes), snapshot
                live.update(views.overview_tables(snapshot, previous), refresh=True)
        except KeyboardInterrupt:
            pass


def _settings() -> Settings:
    """The settings, or one line saying which setting is wrong (exit 1) instead of a traceback."""
    from pydantic import ValidationError

    from batchq.config import get_settings

    try:
        return get_settings()
    except ValidationError as error:
        first = error.errors()[0]
        name = "BATCHQ_" + "_".join(str(part) for part in first["loc"]).upper()
        typer.echo(f"error: {name}: {first['msg']}", err=True)
        raise typer.Exit(1) from None


def require_redis(role: str) -> None:
    """Exit 1 with one line (what, where, how to fix) when no Redis answers at BATCHQ_REDIS_URL."""
    import redis

    from batchq.domain.redis_url import redact
    from batchq.storage.redis_client import probe

    url = _settings().redis_url
    try:
        probe(url, timeout=2.0)
    except redis.RedisError as error:
        typer.echo(
            f"error: batchq {role}: no Redis answers at {redact(url)} ({error}). Run `batchq serve` (it starts"
            " its own Redis), start Redis there, or point BATCHQ_REDIS_URL at yours.",
            err=True,
        )
        raise typer.Exit(1) from None
    _upgrade(role, url)


def _upgrade(role: str, url: str) -> None:
    """Exit 1 with one line when a newer release already runs on this Redis; else move what an older one left."""
    from batchq import upgrade
    from batchq.errors import NewerSchema
    from batchq.storage.redis_client import connect

    client = connect(url, max_connections=2)
    try:
        upgrade.start(client)
    except NewerSchema as error:
        typer.echo(f"error: batchq {role}: {error.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        client.close()


def _key_store() -> ApiKeyStore:
    from batchq.config import get_settings
    from batchq.storage.redis_client import connect

    return ApiKeyStore(connect(get_settings().redis_url, max_connections=4))


def main() -> None:
    app()


# -- presentation -----------------------------------------------------------------------------------


def uvicorn_level(level: str) -> str | int:
    """A logging level as uvicorn takes it: its names (``WARN`` is ``warning``) or a number."""
    name = level.strip().lower()
    name = {"warn": "warning", "fatal": "critical", "notset": "trace"}.get(name, name)
    if name in {"critical", "error", "warning", "info", "debug", "trace"}:
        return name
    return int(name) if name.isdigit() else "info"


def outcome_code(batch: Batch) -> int:
    """0 completed with no failed line; 2 completed with some, or cancelled/expired with some lines done; else 1."""
    counts = batch.request_counts
    if batch.status == Status.COMPLETED:
        return 2 if counts.failed else 0
    if batch.status in (Status.CANCELLED, Status.EXPIRED) and counts.completed:
        return 2
    return 1


@contextmanager
def _client(api_url: str | None, api_key: str | None, on_behalf_of: str | None) -> Iterator[Client]:
    """A ``Client``; any client, HTTP or I/O error is printed and exits 1."""
    try:
        with Client(api_url, api_key, on_behalf_of) as client:
            yield client
    except (ClientError, httpx2.HTTPError, OSError) as error:
        ERR.print(Text.assemble(("error: ", "bold red"), f"{error or type(error).__name__}"), soft_wrap=True)
        raise typer.Exit(1) from None


def _metadata(pairs: list[str]) -> dict[str, str] | None:
    bad = [pair for pair in pairs if "=" not in pair]
    if bad:
        ERR.print(Text.assemble(("error: ", "bold red"), f"--metadata takes k=v, got {bad[0]!r}"))
        raise typer.Exit(1)
    return dict(pair.split("=", 1) for pair in pairs) or None


@dataclass(frozen=True)
class _Follow:
    """What ``submit`` and ``batches retry`` do after creating: follow and download, or not."""

    wait: bool
    output: Path | None
    errors: Path | None
    poll_interval: float


def _finish(client: Client, batch: Batch, follow: _Follow, as_json: bool) -> NoReturn:
    """Follow a new batch if asked, save its files, show it and exit with its outcome code."""
    if follow.wait or follow.output or follow.errors:
        batch = _follow(client, batch.id, follow.poll_interval)
        _save_results(client, batch, follow.output, follow.errors)
    _show(batch, as_json, views.batch_summary)
    raise typer.Exit(outcome_code(batch) if is_terminal(batch.status) else 0)


def _submit_many(client: Client, request: BulkRequest, poll_interval: float, as_json: bool) -> NoReturn:
    """Split, submit, follow, merge (or resume); show the batches and exit with their combined outcome."""
    try:
        with views.counts_bar() as update:
            result = submit_many(
                client, request, poll_interval=poll_interval,
                progress=lambda p: update(p.status, p.done, p.total, p.failed),
                notice=lambda line: ERR.print(line, soft_wrap=True, markup=False),
            )  # fmt: skip
    except KeyboardInterrupt:
        ERR.print("Stopped; the batches keep running. Run the same command again to resume.")
        raise typer.Exit(130) from None
    ERR.print(f"Wrote {result.output} and {result.errors} from {len(result.batches)} batch(es) ({result.manifest}).")
    if len(result.batches) == 1:
        _show(result.batches[0], as_json, views.batch_summary)
    else:
        _show(page_of(result.batches, False, lambda b: b.id), as_json, views.batch_table)
    raise typer.Exit(combined_code([outcome_code(batch) for batch in result.batches]))


def combined_code(codes: list[int]) -> int:
    """The exit code of several batches: theirs when they agree, else 2 (partial)."""
    return codes[0] if len(set(codes)) == 1 else 2


def _follow(client: Client, batch_id: str, poll_interval: float) -> Batch:
    try:
        with views.progress_bar() as update:
            return client.wait(batch_id, poll_interval=poll_interval, progress=update)
    except KeyboardInterrupt:
        ERR.print(f"Stopped waiting; {batch_id} keeps running (batchq batches get|cancel {batch_id}).")
        raise typer.Exit(130) from None


def _save_results(client: Client, batch: Batch, output: Path | None, errors: Path | None) -> None:
    if batch.status == Status.FAILED:  # validation failed: nothing ran; the summary shows why
        return
    wanted = ((batch.output_file_id, output, "output"), (batch.error_file_id, errors, "errors"))
    for file_id, explicit, label in wanted:
        target = explicit or Path(f"{batch.id}_{label}.jsonl")
        if file_id:
            ERR.print(f"Wrote {client.download(file_id, target)}")
        elif explicit:  # asked for by name: an empty file says "no such lines"
            explicit.write_bytes(b"")


def _show(model: BaseModel, as_json: bool, render: Callable[[Any], Table]) -> None:
    if as_json:
        sys.stdout.write(model.model_dump_json(indent=2) + "\n")
    else:
        OUT.print(render(model))
