"""The client's exceptions: what it refuses itself, and a non-2xx answer with the OpenAI error envelope."""

from __future__ import annotations

from typing import Any

import httpx2


class ClientError(Exception):
    """Anything the client itself refuses (e.g. no API key); the base of ``APIError``."""


class APIError(ClientError):
    """A non-2xx answer; carries the HTTP status and the OpenAI error envelope's fields."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code or 'error'}: {message}")
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    @classmethod
    def from_response(cls, response: httpx2.Response) -> APIError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["message"]), **envelope_fields(error))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, response.text[:500] or response.reason_phrase)

    @property
    def transient(self) -> bool:
        return transient_status(self.status_code)


def envelope_fields(error: dict[str, Any]) -> dict[str, str | None]:
    return {name: None if error.get(name) is None else str(error[name]) for name in ("type", "param", "code")}


def raise_for_status(response: httpx2.Response) -> None:
    if response.is_error:
        raise APIError.from_response(response)


def transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500
