"""batchq: a self-hosted, OpenAI-compatible Batch API on Celery workers over Redis."""

__version__ = "0.1.0"
