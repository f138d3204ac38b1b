"""A fresh PostgreSQL database per test, from the server named by ``AUTONORM_TEST_POSTGRES_URL``.

Without that server the tests that need it are skipped, except where the ``CI`` variable is set:
there a missing server fails them.
"""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

POSTGRES_ENV = "AUTONORM_TEST_POSTGRES_URL"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {reason}")
    pytest.skip(f"no PostgreSQL: {reason}")


@pytest.fixture
def postgres_url() -> str:
    """The URL (with its password) of an empty database, dropped after the test."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        _unavailable(f"set {POSTGRES_ENV}=postgresql+psycopg2://user:password@127.0.0.1/db")
    name = f"autonorm_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        _unavailable(str(exc).splitlines()[0])
    yield make_url(url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
