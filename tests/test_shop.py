"""The shop over real HTTP against a real Gunicorn on 127.0.0.1, with a small seeded SQLite."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from experiments.procs import free_port
from shop.catalog import CATEGORIES
from shop.serve import PROJECT_DIR, Server, gunicorn
from stacks.variant import GunicornSettings, Variant

PRODUCTS = 2000


def seed(data_dir: Path, *extra: str, products: int = PRODUCTS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shop", "seed", "--products", str(products),
                           *extra], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SCALELAB_DATA_DIR": str(data_dir)}, check=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shopdata")
    done = seed(path)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[Server]:
    """2 gthread workers x 4 threads, flags exactly as the Variant renders them."""
    port = free_port()
    variant = Variant(name="shop-test", gunicorn=GunicornSettings(
        workers=2, threads=4, worker_class="gthread"))
    with gunicorn(variant.gunicorn_args(f"127.0.0.1:{port}"), port, data_dir / "gunicorn.log",
                  env={"SCALELAB_DATA_DIR": str(data_dir)}) as srv:
        yield srv


@pytest.fixture()
def db(data_dir: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(data_dir / "shop.sqlite3", timeout=20, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def call(server: Server, method: str, path: str, body: Any = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    """One request; every answer must be JSON, and errors must say why in `error`."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    payload = json.loads(text)
    if status >= 400:
        assert status < 500, (status, payload)
        assert isinstance(payload.get("error"), str) and payload["error"], payload
    return status, payload


def stock(db: sqlite3.Connection, product_id: int) -> int:
    return db.execute("SELECT stock FROM shop_product WHERE id = ?", (product_id,)).fetchone()[0]


# ---- reads ------------------------------------------------------------------------------

def test_healthz(server: Server) -> None:
    assert call(server, "GET", "/healthz") == (200, {"status": "ok"})


def test_pagination_bounds(server: Server) -> None:
    status, first = call(server, "GET", "/products/?page=1")
    assert status == 200
    assert (first["count"], first["num_pages"], first["page"]) == (PRODUCTS, PRODUCTS // 20, 1)
    assert [p["id"] for p in first["results"]] == list(range(1, 21))
    assert call(server, "GET", "/products/")[1]["results"] == first["results"]
    status, last = call(server, "GET", f"/products/?page={PRODUCTS // 20}")
    assert status == 200 and last["results"][-1]["id"] == PRODUCTS
    assert call(server, "GET", f"/products/?page={PRODUCTS // 20 + 1}")[0] == 404
    for bad in ("abc", "0", "-1", "1.5", "", "99999999999999999999999"):
        assert call(server, "GET", f"/products/?page={bad}")[0] == 400, bad


def test_category_filter(server: Server) -> None:
    slug = CATEGORIES[3][0]
    status, page = call(server, "GET", f"/products/?category={slug}&page=2")
    assert status == 200 and len(page["results"]) == 20
    assert page["count"] == PRODUCTS // len(CATEGORIES) + (PRODUCTS % len(CATEGORIES) >= 4)
    assert {p["category"]["slug"] for p in page["results"]} == {slug}
    assert call(server, "GET", "/products/?category=no-such-thing")[0] == 404


def test_product_detail(server: Server, db: sqlite3.Connection) -> None:
    status, product = call(server, "GET", "/products/7/")
    assert status == 200
    name, price = db.execute("SELECT name, price FROM shop_product WHERE id = 7").fetchone()
    assert (product["id"], product["name"]) == (7, name)
    assert float(product["price"]) == pytest.approx(float(price))
    assert set(product) == {"id", "name", "description", "price", "stock", "category",
                            "created_at"}
    assert call(server, "GET", f"/products/{PRODUCTS + 1}/")[0] == 404
    assert call(server, "GET", "/products/0/")[0] == 400
    assert call(server, "GET", "/products/99999999999999999999999/")[0] == 400


def test_search_is_a_substring_scan(server: Server, db: sqlite3.Connection) -> None:
    status, found = call(server, "GET", "/search/?q=Kettle")
    expected = db.execute("SELECT COUNT(*) FROM shop_product WHERE name LIKE '%kettle%' "
                          "OR description LIKE '%kettle%'").fetchone()[0]
    assert status == 200 and found["count"] == expected > 20
    assert len(found["results"]) == 20
    assert all("kettle" in (p["name"] + p["description"]).lower() for p in found["results"])
    assert call(server, "GET", "/search/?q=nothing-matches-this")[1]["count"] == 0
    assert call(server, "GET", "/search/?q=")[0] == 400
    assert call(server, "GET", "/search/")[0] == 400
    assert call(server, "GET", "/search/?q=" + "x" * 101)[0] == 400


def test_all_serializes_every_product(server: Server) -> None:
    status, everything = call(server, "GET", "/products/?all=1")
    assert status == 200 and everything["count"] == PRODUCTS
    assert [p["id"] for p in everything["results"]] == list(range(1, PRODUCTS + 1))


def test_unknown_route_and_method(server: Server) -> None:
    assert call(server, "GET", "/nope/")[0] == 404
    assert call(server, "GET", "/cart/")[0] == 405
    assert call(server, "POST", "/products/", {"x": 1})[0] == 405


# ---- writes -----------------------------------------------------------------------------

def test_cart_add_and_bad_input(server: Server) -> None:
    status, cart = call(server, "POST", "/cart/", {"product_id": 3, "quantity": 2})
    assert status == 201 and cart["lines"] == 1 and cart["cart_id"]
    status, again = call(server, "POST", "/cart/", {"product_id": 4, "cart_id": cart["cart_id"]})
    assert (status, again) == (201, {"cart_id": cart["cart_id"], "lines": 2})
    status, mine = call(server, "POST", "/cart/", {"product_id": 4, "cart_id": "my-own-id_1"})
    assert (status, mine["cart_id"]) == (201, "my-own-id_1")
    bad_bodies = [
        {"product_id": 3, "quantity": -1}, {"product_id": 3, "quantity": 0},
        {"product_id": 3, "quantity": 101}, {"product_id": 3, "quantity": 1.5},
        {"product_id": 3, "quantity": True}, {"product_id": "x"}, {}, {"quantity": 1},
        {"product_id": 3, "cart_id": 5}, {"product_id": 3, "cart_id": "has space"},
    ]
    for body in bad_bodies:
        assert call(server, "POST", "/cart/", body)[0] == 400, body
    assert call(server, "POST", "/cart/", {"product_id": PRODUCTS + 5})[0] == 404
    assert call(server, "POST", "/cart/", raw=b"{not json")[0] == 400
    assert call(server, "POST", "/cart/", raw=b"[1, 2]")[0] == 400
    assert call(server, "POST", "/cart/", raw=b"\xff\xfe")[0] == 400


def test_order_from_cart(server: Server, db: sqlite3.Connection) -> None:
    before = stock(db, 11), stock(db, 12)
    _, cart = call(server, "POST", "/cart/", {"product_id": 11, "quantity": 2})
    call(server, "POST", "/cart/", {"product_id": 12, "quantity": 3, "cart_id": cart["cart_id"]})
    status, order = call(server, "POST", "/orders/", {"cart_id": cart["cart_id"]})
    assert status == 201 and order["lines"] == 2
    assert (stock(db, 11), stock(db, 12)) == (before[0] - 2, before[1] - 3)
    assert call(server, "POST", "/orders/", {"cart_id": cart["cart_id"]})[0] == 409
    assert call(server, "POST", "/cart/", {"product_id": 1, "cart_id": cart["cart_id"]})[0] == 409


def test_order_bad_input(server: Server) -> None:
    for body in ({}, {"items": []}, {"items": [{"product_id": 1, "quantity": -2}]},
                 {"items": "1"}, {"items": [5]}, {"cart_id": "c", "items": [{"product_id": 1}]},
                 {"items": [{"product_id": 1}] * 51}):
        assert call(server, "POST", "/orders/", body)[0] == 400, body
    assert call(server, "POST", "/orders/", {"cart_id": "never-created"})[0] == 404
    assert call(server, "POST", "/orders/", {"items": [{"product_id": PRODUCTS + 9}]})[0] == 404
    assert call(server, "POST", "/orders/", raw=b"")[0] == 400


def test_order_is_all_or_nothing(server: Server, db: sqlite3.Connection) -> None:
    db.execute("UPDATE shop_product SET stock = 5 WHERE id = 22")
    before, orders = stock(db, 21), db.execute("SELECT COUNT(*) FROM shop_order").fetchone()[0]
    items = [{"product_id": 21, "quantity": 1}, {"product_id": 22, "quantity": 10}]
    assert call(server, "POST", "/orders/", {"items": items})[0] == 409
    assert (stock(db, 21), stock(db, 22)) == (before, 5)
    assert db.execute("SELECT COUNT(*) FROM shop_order").fetchone()[0] == orders


def _concurrently(n: int, fn: Any) -> list[Any]:
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_orders_of_one_cart_make_one_order(server: Server,
                                                      db: sqlite3.Connection) -> None:
    token = "race-cart"
    adds = _concurrently(12, lambda i: call(server, "POST", "/cart/",
                                            {"product_id": 100 + i, "cart_id": token})[0])
    assert adds == [201] * 12  # no lost lines while adding concurrently
    before = [stock(db, 100 + i) for i in range(12)]
    statuses = _concurrently(12, lambda i: call(server, "POST", "/orders/",
                                                {"cart_id": token})[0])
    assert sorted(statuses) == [201] + [409] * 11
    rows = db.execute("SELECT ol.product_id, ol.quantity FROM shop_orderline ol JOIN shop_order o "
                      "ON o.id = ol.order_id JOIN shop_cart c ON c.id = o.cart_id "
                      "WHERE c.token = ?", (token,)).fetchall()
    assert sorted(rows) == [(100 + i, 1) for i in range(12)]
    assert [stock(db, 100 + i) for i in range(12)] == [s - 1 for s in before]


def test_concurrent_orders_never_oversell(server: Server, db: sqlite3.Connection) -> None:
    db.execute("UPDATE shop_product SET stock = 6 WHERE id = 42")
    statuses = _concurrently(16, lambda i: call(server, "POST", "/orders/", {
        "items": [{"product_id": 43, "quantity": 1}, {"product_id": 42, "quantity": 1}]})[0])
    assert sorted(statuses) == [201] * 6 + [409] * 10
    assert stock(db, 42) == 0
    sold = db.execute("SELECT COUNT(*) FROM shop_orderline WHERE product_id = 42").fetchone()[0]
    assert sold == 6


def test_gunicorn_log_has_standard_lines_and_no_500(server: Server) -> None:
    log = server.log()
    assert "Booting worker with pid" in log
    assert '"GET /healthz HTTP/1.1" 200' in log
    assert '" 500 ' not in log and "Traceback" not in log


# ---- seeding ----------------------------------------------------------------------------

def _dump(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        digest = hashlib.sha256()
        for table in ("shop_category", "shop_product"):
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY id"):  # noqa: S608
                digest.update(repr(row).encode())
        return digest.hexdigest()
    finally:
        conn.close()


def test_seeding_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert seed(first, products=500).returncode == 0
    digest = _dump(first / "shop.sqlite3")
    again = seed(first, products=500)
    assert again.returncode == 0 and "already seeded" in again.stdout
    assert _dump(first / "shop.sqlite3") == digest
    assert seed(second, "--force", products=500).returncode == 0
    assert _dump(second / "shop.sqlite3") == digest
    assert not (first / "shop.sqlite3-wal").exists() or \
        (first / "shop.sqlite3-wal").stat().st_size == 0
    assert seed(first, products=300).returncode == 0  # a different size rewrites the data
    conn = sqlite3.connect(first / "shop.sqlite3")
    assert conn.execute("SELECT COUNT(*), MAX(id) FROM shop_product").fetchone() == (300, 300)
    conn.close()


def test_seed_rejects_bad_product_count(tmp_path: Path) -> None:
    done = seed(tmp_path, products=0)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --products must be between 1") and \
        "Traceback" not in done.stderr


def test_database_url_switches_engine() -> None:
    from shop.settings import database_from_url

    pg = database_from_url("postgres://shop:p%40ss@db.internal:5433/shopdb?sslmode=require")
    assert (pg["ENGINE"], pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "django.db.backends.postgresql", "shopdb", "shop", "p@ss", "db.internal", "5433")
    assert pg["OPTIONS"] == {"sslmode": "require"}
    assert database_from_url("mysql://root@localhost/shop")["ENGINE"] == \
        "django.db.backends.mysql"
    with pytest.raises(ValueError, match="DATABASE_URL scheme 'redis' is not supported"):
        database_from_url("redis://localhost/0")


def test_seed_rejects_bad_database_url(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "shop", "seed"], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "DATABASE_URL": "redis://localhost/0"})
    assert done.returncode == 2 and done.stderr.startswith("error: the shop's database settings")
