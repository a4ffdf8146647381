"""BATCHQ_REDIS_URL's Sentinel form: parsing, kombu's form of it, redaction, and what Celery gets."""

from __future__ import annotations

import pytest
from kombu import Connection  # type: ignore[attr-defined]
from pydantic import ValidationError

from batchq.config import Settings
from batchq.domain.redis_url import SentinelUrl, is_sentinel, parse_sentinel_url, redact
from workers.celery_app import broker_url, celery_config


def test_a_full_sentinel_url_parses_into_its_parts() -> None:
    url = "sentinel://:p%40ss@h1:26379,h2:26380,[::1]/mymaster?db=2&sentinel_password=s3"
    assert parse_sentinel_url(url) == SentinelUrl(
        sentinels=(("h1", 26379), ("h2", 26380), ("::1", 26379)),
        master="mymaster", db=2, username=None, password="p@ss", sentinel_password="s3",
    )  # fmt: skip


def test_the_defaults_are_port_26379_db_0_and_no_credentials() -> None:
    parsed = parse_sentinel_url("SENTINEL://a,b:1/m")
    assert parsed == SentinelUrl(sentinels=(("a", 26379), ("b", 1)), master="m")


def test_a_username_without_password_is_kept() -> None:
    assert parse_sentinel_url("sentinel://bob@a/m").username == "bob"
    assert parse_sentinel_url("sentinel://bob:pw@a/m").password == "pw"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://a:26379,b:26379", "name the master"),
        ("sentinel://a:26379/", "name the master"),
        ("sentinel://a/m/0", "name the master"),
        ("sentinel://a,,b/m", "empty Sentinel address"),
        ("sentinel://a:port/m", "port must be a number"),
        ("sentinel://a:70000/m", "port must be a number"),
        ("sentinel://:1/m", "has no host"),
        ("sentinel://a/m?db=x", "db must be a database number"),
        ("sentinel://a/m?master=m", "unknown option 'master'"),
        ("redis://a/0", "not a sentinel"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_sentinel_url(url)


def test_is_sentinel_only_for_the_sentinel_scheme() -> None:
    assert is_sentinel(" sentinel://a/m") and not is_sentinel("redis://sentinel/0")


def test_kombu_url_carries_credentials_and_db_on_every_sentinel() -> None:
    spec = parse_sentinel_url("sentinel://u:p%3Bw@h1:1,[::1]:2/mymaster?db=3")
    assert spec.kombu_url() == "sentinel://u:p%3Bw@h1:1/3;sentinel://u:p%3Bw@[::1]:2/3"
    conn = Connection(spec.kombu_url(), transport_options=spec.kombu_options())  # type: ignore[no-untyped-call]
    assert (conn.transport_cls, conn.hostname, conn.port, conn.password) == ("sentinel", "h1", 1, "p;w")
    assert conn.virtual_host == "3" and len(conn.alt) == 2


def test_kombu_options_name_the_master_and_the_sentinels_password() -> None:
    assert parse_sentinel_url("sentinel://a/m").kombu_options() == {"master_name": "m"}
    with_password = parse_sentinel_url("sentinel://a/m?sentinel_password=x").kombu_options()
    assert with_password == {"master_name": "m", "sentinel_kwargs": {"password": "x"}}


def test_celery_gets_kombus_form_and_the_master_name() -> None:
    settings = Settings(_env_file=None, redis_url="sentinel://a:1,b:2/mymaster")  # type: ignore[call-arg]
    config = celery_config(settings)
    assert config["broker_url"] == "sentinel://a:1/0;sentinel://b:2/0"
    assert config["broker_transport_options"]["master_name"] == "mymaster"
    assert broker_url("redis://r:6379/1") == "redis://r:6379/1"
    plain = celery_config(Settings(_env_file=None, redis_url="redis://r:6379/1"))  # type: ignore[call-arg]
    assert "master_name" not in plain["broker_transport_options"]


def test_settings_refuse_a_malformed_sentinel_url() -> None:
    with pytest.raises(ValidationError, match="name the master"):
        Settings(_env_file=None, redis_url="sentinel://a:26379")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:secret@h/0", "redis://user:***@h/0"),
        ("sentinel://:pw@a,b/m?db=1&sentinel_password=x", "sentinel://:***@a,b/m?db=1&sentinel_password=***"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("sentinel://bob@a/m", "sentinel://bob@a/m"),
    ],
)
def test_redact_hides_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown
