"""batchq: a self-hosted, OpenAI-compatible Batch API on Celery workers over Redis."""

from batchq.version import version

__version__ = version()
