"""The ``batchq`` command: argument parsing only; every command delegates to one function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="batchq: an OpenAI-compatible Batch API on Celery workers over Redis.", no_args_is_help=True)
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    uvicorn.run("batchq.api.main:app", host=host, port=port, workers=workers, log_level="warning", access_log=False)


@app.command(context_settings=PASSTHROUGH)
def worker(ctx: typer.Context) -> None:
    """Run a Celery worker; extra options go to ``celery worker`` (e.g. --concurrency 64)."""
    from workers import app as celery_app

    celery_app.worker_main(["worker", *ctx.args])


@app.command()
def scheduler() -> None:
    """Run only the periodic watchdog (expiry, stuck batches, lost lines). Workers run it too."""
    from workers.tasks import run_scheduler

    run_scheduler()


@app.command("mock-upstream", context_settings=PASSTHROUGH)
def mock_upstream(ctx: typer.Context) -> None:
    """Serve a mock OpenAI-compatible upstream (see --help of python -m batchq.mock_upstream)."""
    from batchq import mock_upstream as mock

    mock.main(ctx.args)


@app.command()
def demo(
    lines: Annotated[int, typer.Option(help="Requests in the demo batch.")] = 200,
    workdir: Annotated[Path, typer.Option(help="Where logs, data and results go.")] = Path("batchq-demo"),
) -> None:
    """Run a real batch end to end on this machine (starts Redis if none answers) and print where the results are."""
    from batchq.demo import run_demo

    raise typer.Exit(run_demo(lines, workdir))


def main() -> None:
    app()
