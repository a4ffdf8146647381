"""``BATCHQ_REDIS_URL`` forms, parsed without I/O: a plain Redis URL, or a set of Sentinels.

A Sentinel URL names the Sentinels and the monitored master's name; the clients ask the Sentinels
where the master is, and ask again after a failover::

    sentinel://[[username]:password@]host[:port][,host[:port]...]/<master-name>[?db=N&sentinel_password=...]

- ``host:port`` pairs are the Sentinels (port 26379 when left out; IPv6 in brackets, ``[::1]:26379``);
- ``username``/``password`` (percent-encoded) are those of the Redis master and replicas;
- ``db`` is the database number (0); ``sentinel_password`` is the Sentinels' own ``requirepass``,
  when they have one.

Redis Cluster is not supported (see docs/operations.md): the Lua scripts build keys inside the script.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

SCHEME = "sentinel"
DEFAULT_PORT = 26379
QUERY_KEYS = {"db", "sentinel_password"}


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def kombu_url(self) -> str:
        """kombu's form: one ``sentinel://`` URL per Sentinel, joined by ``;``. Each carries the
        credentials and the database: kombu reads them from the first, and switches to the next
        when a connection fails."""
        auth = _userinfo(self.username, self.password)
        return ";".join(f"{SCHEME}://{auth}{_host(host)}:{port}/{self.db}" for host, port in self.sentinels)

    def kombu_options(self) -> dict[str, object]:
        """The broker transport options kombu's Sentinel transport needs besides the URL."""
        options: dict[str, object] = {"master_name": self.master}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options


def is_sentinel(url: str) -> bool:
    return url.strip().lower().startswith(SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of a ``sentinel://`` URL; ``ValueError`` saying what is wrong otherwise."""
    if not is_sentinel(url):
        raise ValueError(f"not a {SCHEME}:// URL")
    parts = urlsplit(url.strip())
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    master = unquote(parts.path.strip("/"))
    if not master or "/" in master:
        raise ValueError("name the master after the Sentinels: sentinel://host:26379,host:26379/<master-name>")
    query = _query(parts.query)
    return SentinelUrl(
        sentinels=tuple(_sentinel(item) for item in hostlist.split(",")),
        master=master,
        db=_db(query.get("db", "0")),
        username=username,
        password=password,
        sentinel_password=query.get("sentinel_password"),
    )


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url.strip())
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    query = "&".join(
        f"{key}=***" if key.endswith("password") else f"{key}={value}"
        for key, value in (item.partition("=")[::2] for item in parts.query.split("&") if item)
    )
    netloc = f"{userinfo}{at}{hostlist}"
    return parts._replace(netloc=netloc, query=query).geturl()


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    username, colon, password = userinfo.partition(":")
    return unquote(username) or None, (unquote(password) or None) if colon else None


def _sentinel(item: str) -> tuple[str, int]:
    item = item.strip()
    if not item:
        raise ValueError("an empty Sentinel address (a stray comma?)")
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"Sentinel address {item!r} has no host")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"Sentinel address {item!r}: the port must be a number from 1 to 65535")
    return host, int(port) if port else DEFAULT_PORT


def _query(query: str) -> dict[str, str]:
    values = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = set(values) - QUERY_KEYS
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (known: {', '.join(sorted(QUERY_KEYS))})")
    return {key: found[-1] for key, found in values.items()}


def _db(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"db must be a database number, got {value!r}")
    return int(value)


def _userinfo(username: str | None, password: str | None) -> str:
    if password is None:
        return f"{quote(username, safe='')}@" if username else ""
    return f"{quote(username or '', safe='')}:{quote(password, safe='')}@"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
