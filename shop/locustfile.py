"""The shoppers' load profile for the scalelab shop (plain `locust -f` use and the runner's).

    locust -f shop/locustfile.py --host http://127.0.0.1:8000

One user class, `Shopper`, whose every task makes exactly ONE HTTP request: the experiment
runner replaces `wait_time` with constant pacing, so tasks/s per user = requests/s per user.
Requests are named by route (`/products/[id]`, not `/products/123/`) so stats group sensibly.

Weights (out of 100 with the default SHOP_ALL_WEIGHT=1; list pages are mostly the first few,
one in ten anywhere in the catalogue, a quarter of them filtered by category):
    /products/?page 42, /products/[id] 30, /search/ 3, /cart/ 14, /orders/ 10,
    /products/?all=1 SHOP_ALL_WEIGHT (default 1; 0 disables it; 5 makes the memory hazard
    five times as frequent).
Knobs (environment):
    SHOP_ALL_WEIGHT   weight of the unpaginated `?all=1` list (the seed's out-of-memory hazard)
    SHOP_PRODUCTS     number of products in the shop; by default learnt from the first list
                      page (`count`), until then ids stay within the first page.

Orders are placed "buy now" style (`{"items": [...]}`, the lines this shopper added to its cart)
rather than by cart id: behind a round-robin load balancer each instance has its own database,
so a cart created on one instance does not exist on the next. Cart ids are chosen by the client
for the same reason (`POST /cart/` opens a cart with an unknown id). A 409 "not enough stock"
is the shop answering correctly, not a failure.

Imports nothing but locust (and the standard library).
"""

from __future__ import annotations

import os
import random
import uuid

from locust import FastHttpUser, between, task

CATEGORIES = ("books", "music", "movies", "games", "computers", "phones", "cameras", "audio",
              "kitchen", "garden", "tools", "furniture", "lighting", "bedding", "toys", "baby",
              "sports", "outdoors", "fashion", "shoes", "jewelry", "beauty", "health", "pets")
"""Category slugs of the seeded shop (shop/catalog.py; a test keeps the two in step)."""
SEARCH_TERMS = ("kettle", "wireless", "bamboo", "walnut", "guitar", "alpine", "crimson",
                "waterproof", "nothing-matches-this")
PAGE_SIZE = 20
CART_LINES_BEFORE_ORDER = 3
DEEP_PAGE_SHARE = 0.1


def _env_int(name: str, default: int, meaning: str) -> int:
    raw = os.environ.get(name, str(default)).strip()
    if not raw.isascii() or not raw.isdigit():
        raise ValueError(f"{name} must be a whole number >= 0 ({meaning}), got {raw!r}")
    return int(raw)


ALL_WEIGHT = _env_int("SHOP_ALL_WEIGHT", 1, "0 disables the ?all=1 task")


class Shuffled:
    """Deals `items` in a fresh random order each round: every len(items) consecutive picks
    hold each item once. Why, for search terms: a scan costs 67-188 ms of CPU depending on
    the term, and a random pick per search let a step's CPU per request scatter by ~7 % by
    which terms it happened to draw (the scalelab runner deals the tasks themselves from a
    deck the same way)."""

    def __init__(self, items: tuple[str, ...]) -> None:
        self.items = items
        self.left: list[str] = []

    def next(self) -> str:
        if not self.left:
            self.left = random.sample(self.items, len(self.items))
        return self.left.pop()


TERMS = Shuffled(SEARCH_TERMS)
"""Shared by the process's users, so the terms are spread over the whole stream of searches."""


class Shopper(FastHttpUser):
    """Browse, open products, search, fill a cart, order; now and then load the whole list."""

    wait_time = between(0.5, 2.0)
    products: int = _env_int("SHOP_PRODUCTS", 0, "0 learns it from the first list page")
    """Shared by all users: how many products the shop has (0 = not known yet)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.cart_id = uuid.uuid4().hex
        self.lines: list[dict[str, int]] = []

    def _product_id(self) -> int:
        return random.randint(1, Shopper.products or PAGE_SIZE)

    @task(42)
    def browse(self) -> None:
        pages = max(1, -(-Shopper.products // PAGE_SIZE))
        if random.random() < DEEP_PAGE_SHARE:  # a deep page: the database skips OFFSET rows
            page = random.randint(1, pages)
        else:  # most shoppers stay on the first few pages (mean 5)
            page = min(pages, 1 + int(random.expovariate(1 / 4)))
        params = f"page={page}"
        if random.random() < 0.25:
            params = f"category={random.choice(CATEGORIES)}&page=1"
        with self.client.get(f"/products/?{params}", name="/products/?page",
                             catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif not Shopper.products and "category" not in params:
                Shopper.products = int(resp.json()["count"])

    @task(30)
    def product(self) -> None:
        self.client.get(f"/products/{self._product_id()}/", name="/products/[id]")

    @task(3)
    def search(self) -> None:
        """3 % of requests: the scan is ~20x slower than the rest, and at a 5 % share the p95
        landed on the edge of search's own latency, flipping capacity verdicts by chance. The
        terms are dealt (`TERMS`), not drawn."""
        self.client.get(f"/search/?q={TERMS.next()}", name="/search/")

    @task(14)
    def add_to_cart(self) -> None:
        line = {"product_id": self._product_id(), "quantity": random.randint(1, 3)}
        with self.client.post("/cart/", json={"cart_id": self.cart_id, **line}, name="/cart/",
                              catch_response=True) as resp:
            if resp.status_code == 201:
                self.lines.append(line)
            elif resp.status_code == 409:  # this cart was ordered meanwhile: start a new one
                self.cart_id, self.lines = uuid.uuid4().hex, []
                resp.success()
            else:
                resp.failure(f"HTTP {resp.status_code}")

    @task(10)
    def order(self) -> None:
        if not self.lines:  # nothing to order yet: this task's one request is a cart add
            self.add_to_cart()
            return
        with self.client.post("/orders/", json={"items": self.lines[:CART_LINES_BEFORE_ORDER]},
                              name="/orders/", catch_response=True) as resp:
            if resp.status_code in (201, 409):  # 409: out of stock is a correct answer
                self.cart_id, self.lines = uuid.uuid4().hex, []
                resp.success()
            else:
                resp.failure(f"HTTP {resp.status_code}")

    @task(ALL_WEIGHT)
    def all_products(self) -> None:
        self.client.get("/products/?all=1", name="/products/?all=1")
