"""The web dashboard at ``/ui``: server-rendered pages, one small script, served by the API process.

It is off unless ``BATCHQ_UI_SECRET`` is set (the secret signs the session cookie).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

log = logging.getLogger("batchq.ui")


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app`` when the settings allow it; log why not otherwise."""
    from batchq.runtime import Runtime

    runtime: Runtime = app.state.runtime
    if not runtime.settings.ui_secret:
        log.info("dashboard off: set BATCHQ_UI_SECRET (32+ characters) to serve /ui")
        return
    from batchq.ui.routes import mount  # jinja2 and the templates load only when the dashboard is on

    mount(app, runtime.settings.ui_secret)
