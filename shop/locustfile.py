"""The shoppers' load profile for the scalelab shop (plain `locust -f` use and the runner's).

    locust -f shop/locustfile.py --host http://127.0.0.1:8000

One user class, `Shopper`, whose every task makes exactly ONE HTTP request: the experiment
runner replaces `wait_time` with constant pacing, so tasks/s per user = requests/s per user.
Requests are named by route (`/products/[id]`, not `/products/123/`) so stats group sensibly.

Weights (out of 100 with the default SHOP_ALL_WEIGHT=1; of the list pages a quarter are a
category's first page, 7.5 % a page anywhere in the catalogue, the rest one of the first few):
    /products/?page 42, /products/[id] 30, /search/ 3, /cart/ 14, /orders/ 10,
    /products/?all=1 SHOP_ALL_WEIGHT (default 1; 0 disables it; 5 makes the memory hazard
    five times as frequent).
The routes other than `?all=1` are interleaved evenly, not drawn at random: a smooth weighted
round-robin (one per load process, shared by its users) names the next route, so any window
of n requests holds each route n x weight / 100 times to within two; the deep pages'
positions and the search terms are spread the same way (golden-ratio steps from a random
start). Drawn at random, a quick step's few dozen requests held 0-3 of the scans that cost
tens of product pages each, and the step's CPU per request (the capacity search's service
demand) swung with them.
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


def _env_int(name: str, default: int, meaning: str) -> int:
    raw = os.environ.get(name, str(default)).strip()
    if not raw.isascii() or not raw.isdigit():
        raise ValueError(f"{name} must be a whole number >= 0 ({meaning}), got {raw!r}")
    return int(raw)


ALL_WEIGHT = _env_int("SHOP_ALL_WEIGHT", 1, "0 disables the ?all=1 task")


class EvenMix:
    """Smooth weighted round-robin (as in nginx's upstream balancing): each pick adds every
    name's weight to its credit and takes the name with the most, which pays the total back.
    Every window of n picks holds each name n x weight / total times to within two — a
    random draw's counts would spread by sqrt(n x p): two scans or none in a 30-request step."""

    def __init__(self, weights: dict[str, int], rng: random.Random) -> None:
        self.weights = {name: w for name, w in weights.items() if w > 0}
        if not self.weights:
            raise ValueError("EvenMix needs at least one positive weight")
        self.total = sum(self.weights.values())
        self.credit = dict.fromkeys(self.weights, 0)
        for _ in range(rng.randrange(self.total)):  # a random phase: processes differ
            self.next()

    def next(self) -> str:
        for name, weight in self.weights.items():
            self.credit[name] += weight
        pick = max(self.credit, key=self.credit.__getitem__)
        self.credit[pick] -= self.total
        return pick


class Spread:
    """Points in [0, 1) that cover it evenly (golden-ratio steps from a random start): a few
    consecutive deep pages average the catalogue's middle instead of two from its end."""

    STEP = (5 ** 0.5 - 1) / 2

    def __init__(self, rng: random.Random) -> None:
        self.x = rng.random()

    def next(self) -> float:
        self.x = (self.x + self.STEP) % 1.0
        return self.x


ROUTE_WEIGHTS = {"browse": 42, "product": 30, "search": 3, "add_to_cart": 14, "order": 10,
                 "all_products": ALL_WEIGHT}
"""The mix, out of 100 with SHOP_ALL_WEIGHT=1 (README: keep the two in step). `?all=1` stays
a random draw (the even mix gets the rest): the memory hazard's chance clusters of concurrent
whole-catalogue requests are what ran the seed's box out of memory."""
BROWSE_KINDS = {"first_pages": 27, "category": 10, "deep": 3}
"""Of 40 list pages: 27 among the first few, 10 a category's first page, 3 anywhere (7.5 %)."""
_rng = random.Random()


class Shopper(FastHttpUser):
    """Browse, open products, search, fill a cart, order; now and then load the whole list.

    One task, `shop`, runs the route the even mix names next (see the module doc)."""

    wait_time = between(0.5, 2.0)
    products: int = _env_int("SHOP_PRODUCTS", 0, "0 learns it from the first list page")
    """Shared by all users: how many products the shop has (0 = not known yet)."""
    mix = EvenMix({k: w for k, w in ROUTE_WEIGHTS.items() if k != "all_products"}, _rng)
    browse_kinds = EvenMix(BROWSE_KINDS, _rng)
    deep_at = Spread(_rng)
    term_at = Spread(_rng)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.cart_id = uuid.uuid4().hex
        self.lines: list[dict[str, int]] = []

    def _product_id(self) -> int:
        return random.randint(1, Shopper.products or PAGE_SIZE)

    @task
    def shop(self) -> None:
        """Exactly one request: `?all=1` by chance at its weight, else the even mix's next."""
        if random.random() * sum(ROUTE_WEIGHTS.values()) < ALL_WEIGHT:
            self.all_products()
        else:
            getattr(self, Shopper.mix.next())()

    def browse(self) -> None:
        pages = max(1, -(-Shopper.products // PAGE_SIZE))
        kind = Shopper.browse_kinds.next()
        if kind == "deep":  # a page anywhere: the database skips OFFSET rows
            page = 1 + int(Shopper.deep_at.next() * pages)
        else:  # most shoppers stay on the first few pages (mean 5)
            page = min(pages, 1 + int(random.expovariate(1 / 4)))
        params = f"page={page}"
        if kind == "category":
            params = f"category={random.choice(CATEGORIES)}&page=1"
        with self.client.get(f"/products/?{params}", name="/products/?page",
                             catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif not Shopper.products and "category" not in params:
                Shopper.products = int(resp.json()["count"])

    def product(self) -> None:
        self.client.get(f"/products/{self._product_id()}/", name="/products/[id]")

    def search(self) -> None:
        """3 % of requests: the scan is ~20x slower than the rest, and at a 5 % share the p95
        landed on the edge of search's own latency, flipping capacity verdicts by chance."""
        term = SEARCH_TERMS[int(Shopper.term_at.next() * len(SEARCH_TERMS))]
        self.client.get(f"/search/?q={term}", name="/search/")

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

    def all_products(self) -> None:
        self.client.get("/products/?all=1", name="/products/?all=1")
