"""The one exception tree of batchq.

Every error a user can cause or see is a ``BatchqError``; the API maps each class to an
OpenAI-shaped body ``{"error": {"message", "type", "param", "code"}}`` in exactly one table
(``batchq.api.errors``)::

    BatchqError                      500 server_error
    ├── InvalidRequest               400 invalid_request_error
    │   ├── PayloadTooLarge          413
    │   └── Conflict                 409   (e.g. cancelling a finished batch)
    │       └── InProgress           409   (an Idempotency-Key's first request still runs; retry_after)
    ├── AuthenticationFailed         401 authentication_error / invalid_api_key
    ├── NotFound                     404   (unknown id *or* someone else's: same body)
    ├── RateLimited                  429   (carries retry_after seconds)
    ├── Unavailable                  503   (Redis unreachable; carries retry_after seconds)
    │   └── WrongDeployment          503 deployment_mismatch (Redis and the data belong to different deployments)
    │   └── NewerSchema              503   (data written by a newer batchq: left alone, this process stops)
    └── StorageFull                  507 insufficient_storage (no space left: the disk, or Redis's maxmemory)

Foreign errors become these in one place, ``batchq.api.errors.translate``: Redis connection
errors and timeouts -> ``Unavailable``, ENOSPC/EDQUOT (and Redis's OOM) -> ``StorageFull``.

Upstream (LLM gateway) failures are not exceptions of this tree: a line's failure is data,
turned into a result line by ``batchq.execution``.
"""

from __future__ import annotations


class BatchqError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code


class InvalidRequest(BatchqError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_code = "file_too_large"


class Conflict(InvalidRequest):
    status_code = 409
    default_code = "invalid_state"


class InProgress(Conflict):
    default_code = "request_in_progress"

    def __init__(self, message: str, *, retry_after: int, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class AuthenticationFailed(BatchqError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(BatchqError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class RateLimited(BatchqError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(BatchqError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"
    retry_after = 5


class WrongDeployment(Unavailable):
    """Redis and the data storage carry different deployment ids (batchq.domain.identity): nothing
    is deleted; the message says what differs and how to fix it."""

    default_code = "deployment_mismatch"
    retry_after = 60


class NewerSchema(Unavailable):
    """A record or task message of a newer schema than this code knows (batchq.storage.schema):
    it is left as it is, for the newer processes, and this one stops (batchq.upgrade)."""

    default_code = "newer_schema"


class StorageFull(BatchqError):
    status_code = 507
    error_type = "server_error"
    default_code = "insufficient_storage"
