"""URL settings: what RECALLQ_AMQP_URL and RECALLQ_STORE_URL accept, what their
refusals say (the setting named, no password), and how a failure at start is told:
masked() never raises, a name that does not exist is not waited for, the whole
broker wait has a deadline, and a store's file error never blames the broker."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from aiormq.exceptions import AMQPConnectionError
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pymongo.errors import ConfigurationError, InvalidURI
from pymongo.uri_parser import parse_uri

from schemas import connect
from schemas.connect import StartupError, connect_waiting, explain, masked, unreachable
from schemas.settings import BrokerSettings, check_amqp_url, settings_error_line
from worker.settings import WorkerSettings, check_store_url
from worker.startup import failure_line

GOOD_AMQP = [
    "amqp://localhost",
    "amqp://guest:guest@localhost:5672/",
    "amqps://u:p@h:5671/vhost",
    "amqp://u:p@h/%2F",
    "AMQP://h/",
    "amqp://u:p%23w%2Fd%40@rabbit.example.com:5672/v?heartbeat=30&name=x",
    "amqp://[::1]:5672/",
    "amqp://10.0.0.7/",
    "amqp://rabbitmq.rabbitmq.svc:5672/",
]
BAD_AMQP = {
    "notaurl": "not an AMQP URL",
    "http://h/": "not an AMQP URL",
    "guest:secret@h:5672/": "not an AMQP URL",
    "amqp:h": "not an AMQP URL",
    "amqp://guest:secret@127.0.0.1:notaport/": "not a number 1-65535",
    "amqp://guest:secret@h:0/": "not a number 1-65535",
    "amqp://guest:secret@h:65536/": "not a number 1-65535",
    "amqp://guest:secret@h:/": "not a number 1-65535",
    "amqp://guest:secret@h:5672:1/": "not a number 1-65535",
    "amqp://guest:secret@h:٥٦٧٢/": "not a number 1-65535",  # digits, but not ASCII ones
    "amqp://guest:secret@/": "no host",
    "amqp:///vhost": "no host",
    "amqp://guest:se/cret@h/": "percent-encode",
    "amqp://guest:se#cret@h/": "percent-encode",
    "amqp://guest:se?cret@h/": "percent-encode",
    "amqp://guest:secret@h/#x": "fragment",
    "amqp://guest:se@cret/x@h/": "percent-encode",
    "amqp://guest:secret@h/v@host": "percent-encode",
    "amqp://guest:secret@a,b/": "not a host name",
    "amqp://guest:secret@h!/": "not a host name",
    "amqp://guest:secret@[::1/": "IPv6",
    "amqp://guest:secret@[h]:5672/": "IPv6",
    " amqp://guest:secret@h/": "whitespace",
    "amqp://guest:secret@h/\n": "whitespace",
    "amqp://guest:sec ret@h/": "whitespace",
}
GOOD_STORES = [
    "sqlite:///./x.db",
    "sqlite:////abs/x.db",
    "sqlite:///x.db",
    "sqlite:///./a dir/x.db",
    "mongodb://localhost",
    "mongodb://h/?appName=worker@box",
    "mongodb://a:1,b:2/?replicaSet=x",
    "mongodb://reader:s%40cret@127.0.0.1:27017/?directConnection=true&authSource=admin",
    "mongodb://u:p@h:27017/db",
    "mongodb://h?directConnection=true",
    "mongodb://[::1]:27017/",
    "mongodb://%2Ftmp%2Fmongodb-27017.sock",
    "mongodb+srv://cluster.example.net",
    "mongodb+srv://u:p@cluster0.ab1cd.mongodb.net/?retryWrites=true&w=majority",
]
BAD_STORES = {
    "": "not a store URL",
    "postgres://h/db": "not a store URL",
    "sqlite://x.db": "not a store URL",
    "SQLITE:///x.db": "not a store URL",
    "sqlite:///": "no path",
    "sqlite:///x.db\n": "whitespace",
    " sqlite:///x.db": "not a store URL",
    "sqlite:///x\x00.db": "control character",
    "mongodb://": "no host",
    "mongodb://u:secret@/": "no host",
    "mongodb://h:notaport/": "not a number 1-65535",
    "mongodb://h:99999/": "not a number 1-65535",
    "mongodb://a,,b/": "empty host",
    "mongodb://u:se/cret@h/": "percent-encode",
    "mongodb://u:se@cret@h/": "percent-encoded",
    "mongodb://u:se:cret@h/": "percent-encoded",
    "mongodb://u:se%zzcret@h/": "percent-encoded",
    "mongodb://:secret@h/": "no user name",
    "mongodb+srv://a.example.net,b.example.net": "one host and no port",
    "mongodb+srv://cluster.example.net:27017": "one host and no port",
    "mongodb://h /": "whitespace",
    "mongodb://u:se?cret@h/": "percent-encode",
}


@pytest.mark.parametrize("url", GOOD_AMQP)
def test_good_amqp_urls_are_accepted(url: str) -> None:
    assert BrokerSettings(amqp_url=url).amqp_url == url


@pytest.mark.parametrize("url", BAD_AMQP)
def test_bad_amqp_urls_are_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        BrokerSettings(amqp_url=url)
    line = settings_error_line(refused.value)
    assert line.startswith("invalid setting RECALLQ_AMQP_URL: "), line
    assert BAD_AMQP[url] in line
    assert "secret" not in line and "cret" not in line and "Value error" not in line


@pytest.mark.parametrize("url", GOOD_STORES)
def test_good_store_urls_are_accepted(url: str) -> None:
    assert WorkerSettings(store_url=url).store_url == url


@pytest.mark.parametrize("url", BAD_STORES)
def test_bad_store_urls_are_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        WorkerSettings(store_url=url)
    line = settings_error_line(refused.value)
    assert line.startswith("invalid setting RECALLQ_STORE_URL: "), line
    assert BAD_STORES[url] in line
    assert "secret" not in line and "cret" not in line


@pytest.mark.parametrize(
    "url", [u for u in [*GOOD_STORES, *BAD_STORES] if u.startswith("mongodb://")]
)
def test_mongodb_urls_are_judged_as_pymongo_judges_them(url: str) -> None:
    """Refused here when PyMongo would refuse it later (after the model loaded); beyond
    that only whitespace, which PyMongo leaves for the host lookup to fail on."""
    try:
        parse_uri(url)
        pymongo_accepts = True
    except (InvalidURI, ConfigurationError, ValueError):
        pymongo_accepts = False
    assert (url in GOOD_STORES) == pymongo_accepts or BAD_STORES.get(url) == "whitespace"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("amqps:/@[]#?%,.-_ hg0159\x00é:"), max_size=40))
def test_checks_raise_only_value_errors_and_masked_never_raises(url: str) -> None:
    masked(url)
    for check in (check_amqp_url, check_store_url):
        with contextlib.suppress(ValueError):
            check(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:secret@127.0.0.1:notaport/", "amqp://guest:***@127.0.0.1:notaport/"),
        ("amqp://u:secret@[::1]:5672/v", "amqp://u:***@[::1]:5672/v"),
        ("amqp://u:se/cret@h/", "amqp://u:***@h/"),
        ("amqp://u:se#cret@h/", "amqp://u:***@h/"),
        ("amqp://u:se@cret@h/", "amqp://u:***@h/"),
        ("guest:secret@h:5672", "guest:***@h:5672"),
        ("mongodb://u:secret@a:1,b:2/?replicaSet=x", "mongodb://u:***@a:1,b:2/?replicaSet=x"),
        ("amqp://u@h/", "amqp://u@h/"),
        ("amqp://h:5672/%2F", "amqp://h:5672/%2F"),
        ("notaurl", "notaurl"),
        ("amqp://[::1", "amqp://[::1"),
    ],
)
def test_masked_hides_the_password_whatever_the_url(url: str, shown: str) -> None:
    assert masked(url) == shown


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab01:/?#@%[]!, "), min_size=1, max_size=20))
def test_masked_hides_any_password(password: str) -> None:
    for url in (f"amqp://u:{password}@h:5672/v", f"mongodb://u:{password}@a:1,b:2/db?x=y"):
        assert masked(url) == url.replace(f":{password}@", ":***@", 1)


def lookup_failure(errno: int, message: str) -> AMQPConnectionError:
    """What aiormq raises when getaddrinfo fails: its error, wrapped."""
    try:
        try:
            raise socket.gaierror(errno, message)
        except socket.gaierror as exc:
            raise AMQPConnectionError(*exc.args) from exc
    except AMQPConnectionError as wrapped:
        return wrapped


def test_a_name_that_does_not_exist_is_not_waited_for() -> None:
    url = "amqp://guest:secret@nonexistent-host.invalid:5672/"
    missing = lookup_failure(socket.EAI_NONAME, "Name or service not known")
    assert not unreachable(missing)
    line = explain(missing, url)
    assert line is not None and "'nonexistent-host.invalid'" in line
    assert "RECALLQ_AMQP_URL" in line and "secret" not in line


def test_a_resolver_that_says_try_again_is_waited_for() -> None:
    again = lookup_failure(socket.EAI_AGAIN, "Temporary failure in name resolution")
    assert unreachable(again)
    line = explain(again, "amqp://h.example:5672/")
    assert line is not None and "'h.example'" in line and "DNS" in line


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (not RabbitMQ's)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


async def test_the_broker_wait_has_a_deadline_even_when_a_connect_hangs(
    silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connect, "ATTEMPT_MARGIN_S", 0.5)
    before = asyncio.all_tasks()
    started = time.monotonic()
    url = f"amqp://guest:secret@127.0.0.1:{silent_port}/"
    with pytest.raises(StartupError, match=r"did not answer within 0\.7 s") as failed:
        await asyncio.wait_for(connect_waiting(url, 0.2, "test"), timeout=30)
    assert time.monotonic() - started < 5
    assert "RECALLQ_CONNECT_WAIT_S" in str(failed.value) and "secret" not in str(failed.value)
    assert amqp_tasks(asyncio.all_tasks() - before) == []  # no reconnect task left retrying


def amqp_tasks(tasks: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    """The tasks an AMQP client runs (the session's loop also runs other clients' tasks,
    PyMongo's monitors among them, which come and go on their own)."""
    return [task for task in tasks if "aio_pika" in str(task) or "aiormq" in str(task)]


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            NotADirectoryError(20, "Not a directory", "/srv/file/sub"),
            "cannot create /srv/file/sub (Not a directory)",
        ),
        (
            FileExistsError(17, "File exists", "/srv/file"),
            "cannot create /srv/file (Not a directory)",
        ),
        (
            PermissionError(13, "Permission denied", "/srv/file/sub/store.db-wal"),
            "cannot open /srv/file/sub/store.db-wal (Permission denied)",
        ),
    ],
)
def test_a_store_file_error_names_the_store_not_the_broker(error: OSError, line: str) -> None:
    said = failure_line(error, "amqp://guest:secret@h/", "sqlite:////srv/file/sub/store.db")
    assert said == f"store sqlite:////srv/file/sub/store.db: {line}; check RECALLQ_STORE_URL"


def test_other_errors_are_not_the_brokers_to_explain() -> None:
    store_url, amqp_url = "sqlite:////srv/store.db", "amqp://guest:secret@h/"
    assert failure_line(FileNotFoundError(2, "No such file", "/etc/x"), amqp_url, store_url) is None
    assert failure_line(ConnectionRefusedError(111, "refused"), amqp_url, store_url) is None
    refused = AMQPConnectionError(111, "Connect call failed")
    said = failure_line(refused, amqp_url, store_url)
    assert said is not None and said.startswith("cannot reach the broker at amqp://guest:***@h/")
