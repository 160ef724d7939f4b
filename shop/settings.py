"""Django settings for the shop: the workload every scalelab variant runs unless a user brings
their own app.

Kept deliberately small (no admin, sessions or auth) so a worker's memory is the app's data, not
framework baggage. SQLite by default because the seed's box had one disk and no database server;
`DATABASE_URL` switches to PostgreSQL or MySQL.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "scalelab-shop-not-secret-it-serves-test-data")
DEBUG = os.environ.get("SHOP_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = ["shop.apps.ShopConfig"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"
APPEND_SLASH = False
USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def sqlite_path() -> Path:
    """`$SHOP_DB_PATH`, else `$SCALELAB_DATA_DIR/shop.sqlite3`, else `<project>/var/...`."""
    if os.environ.get("SHOP_DB_PATH"):
        return Path(os.environ["SHOP_DB_PATH"])
    if os.environ.get("SCALELAB_DATA_DIR"):
        return Path(os.environ["SCALELAB_DATA_DIR"]) / "shop.sqlite3"
    return PROJECT_DIR / "var" / "shop.sqlite3"


_ENGINES = {
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "pgsql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "sqlite": "django.db.backends.sqlite3",
}


def database_from_url(url: str) -> dict[str, object]:
    """Parse `scheme://user:password@host:port/name?option=value` into a Django DATABASES entry.

    A dozen lines instead of a dependency (dj-database-url): only the three engines we support.
    """
    parts = urlsplit(url)
    engine = _ENGINES.get(parts.scheme.split("+", 1)[0])
    if engine is None:
        raise ValueError(f"DATABASE_URL scheme {parts.scheme!r} is not supported; use "
                         "postgres://, mysql:// or sqlite:///path.")
    if engine.endswith("sqlite3"):
        return {"ENGINE": engine, "NAME": unquote(parts.path) or str(sqlite_path()),
                "OPTIONS": SQLITE_OPTIONS}
    return {
        "ENGINE": engine,
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": dict(parse_qsl(parts.query)),
        "CONN_MAX_AGE": 60,
    }


SQLITE_OPTIONS: dict[str, object] = {
    # Wait (not fail with "database is locked") while another worker writes.
    "timeout": 20,
    # Take the write lock at BEGIN, so two read-then-write transactions cannot deadlock and
    # the loser waits for the busy timeout instead of failing at once.
    "transaction_mode": "IMMEDIATE",
    # WAL: readers never block on the writer; NORMAL sync is safe with WAL.
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(sqlite_path()),
                             "OPTIONS": SQLITE_OPTIONS}}

LOGGING = {
    # Tracebacks of 500s go to stderr, i.e. into Gunicorn's error log next to its own lines.
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR",
                                   "propagate": False}},
}
