"""Optuna storages: SQLite (embedded, one file per sweep, serialized writes) and PostgreSQL (several
machines), opened alike, with the URL shown without its password."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna

from painn_ablate.sweep.spec import SweepError

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT = 20  # seconds between heartbeats of a running trial
GRACE_FACTOR = 3  # a trial is lost after GRACE_FACTOR heartbeats without news
MAX_RETRY = 3  # re-runs of a trial whose worker was lost


SQLITE_TIMEOUT = 60  # seconds a process waits for the SQLite write lock


def sqlite_url(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _use_wal(url: str) -> None:
    """SQLite's WAL journal lets readers go on while a worker writes; the setting stays in the file."""
    path = url[len("sqlite:///"):]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT)) as db:
            db.execute("PRAGMA journal_mode=WAL")


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna flags heartbeats, stale-trial handling and the constant liar as experimental."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def shown_url(url: str) -> str:
    """The URL for messages, with any password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: it holds no password it could mask
        return url


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads `postgresql://` as psycopg 3; the `postgres` extra installs psycopg2,
    so a plain PostgreSQL URL names psycopg2 explicitly when only that driver is there. Without
    either driver: a SweepError that names the extra to install."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            try:
                import psycopg2  # noqa: F401
            except ImportError:
                raise SweepError(f"storage {shown_url(url)} needs a PostgreSQL driver: "
                                 "pip install 'painn-ablate[postgres]' (psycopg2-binary)") from None
            return f"postgresql+psycopg2://{rest}"
    return url


def _serialize_sqlite(engine) -> None:
    """Make every SQLite transaction take the write lock at its BEGIN.

    pysqlite opens a transaction only before a write, and SQLite ignores `SELECT ... FOR
    UPDATE`, so Optuna's read-then-update of a trial runs as two steps and two workers can
    both move one WAITING trial to RUNNING (measured: 4 processes popping 40 trials ran 11 of
    them twice). SQLAlchemy's recipe for pysqlite: take transaction control from the driver
    and BEGIN IMMEDIATE, so that the busy timeout queues the workers instead.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_leaves_transactions_alone(dbapi_connection, record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while the storage was set up predate the listeners


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT, attempts: int = 5) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeats; a lost trial is re-enqueued with the same parameters."""
    url = driver_url(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        _use_wal(url)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}}
    for attempt in range(attempts):
        try:
            with quiet_optuna():
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                    grace_period=GRACE_FACTOR * heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRY))
            break
        except Exception as exc:  # bad URL, server down, missing driver: all one line for the user
            # Processes that meet a new database at once race to create its tables; a second try
            # finds them made.
            racing = "already exists" in str(exc) or type(exc).__name__ == "IntegrityError"
            if not racing or attempt == attempts - 1:
                raise SweepError(f"cannot open storage {shown_url(url)}: {' '.join(str(exc).split())[:300]}") from None
            time.sleep(0.5 + attempt)
    if url.startswith("sqlite"):
        _serialize_sqlite(storage.engine)
    return storage
