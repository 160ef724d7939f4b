"""Deterministic, idempotent, fast seeding: the same `--products N` always writes the same rows.

Fast because rows go in with `executemany` in large batches inside one transaction (Django's
`bulk_create` builds a model instance per row first, which triples the time for 100k rows).
Idempotent because a `SeedMark` row records what was written: an identical second run returns
at once, a different N rewrites the data set from scratch.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.core.management import call_command
from django.db import connection, transaction

from shop.catalog import CATEGORIES, DEFAULT_PRODUCTS, NOUNS, WORDS
from shop.models import SeedMark

SEED_VERSION = 1
"""Bump when the generator changes, so old data files are rewritten instead of reused."""
RNG_SEED = 20231125
BATCH = 10_000
DESCRIPTION_WORDS = 40
EPOCH = datetime(2023, 1, 1, tzinfo=UTC)

_TABLES = ("shop_orderline", "shop_order", "shop_cartline", "shop_cart", "shop_product",
           "shop_category", "shop_seedmark")


def product_rows(count: int) -> Iterator[tuple[int, int, str, str, Decimal, int, datetime]]:
    """(id, category_id, name, description, price, stock, created_at) for ids 1..count.

    One RNG seeded with a constant, consumed in id order: the rows depend only on `count`'s
    prefix, so 2000 products are the first 2000 of 100k.
    """
    rng = random.Random(RNG_SEED)
    n_categories = len(CATEGORIES)
    for pid in range(1, count + 1):
        noun = rng.choice(NOUNS)
        name = f"{rng.choice(WORDS).capitalize()} {noun} {rng.randint(100, 9999)}"
        description = " ".join(rng.choices(WORDS, k=DESCRIPTION_WORDS)) + f" {noun}."
        price = Decimal(rng.randint(199, 99_999)) / 100
        stock = rng.randint(1_000, 10_000)
        created = EPOCH + timedelta(minutes=pid * 3, seconds=rng.randint(0, 59))
        yield pid, 1 + (pid - 1) % n_categories, name, description, price, stock, created


def _batches(count: int) -> Iterator[list[tuple[object, ...]]]:
    ops = connection.ops
    batch: list[tuple[object, ...]] = []
    for pid, cat, name, desc, price, stock, created in product_rows(count):
        batch.append((pid, cat, name, desc, ops.adapt_decimalfield_value(price, 10, 2), stock,
                      ops.adapt_datetimefield_value(created)))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def is_seeded(products: int) -> bool:
    mark = SeedMark.objects.order_by("-id").first()
    return mark is not None and mark.version == SEED_VERSION and mark.products == products


def seed(products: int = DEFAULT_PRODUCTS, force: bool = False) -> tuple[bool, float]:
    """Migrate, then write the data set unless it is already there. Returns (wrote, seconds)."""
    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    if not force and is_seeded(products):
        return False, time.perf_counter() - started
    with transaction.atomic(), connection.cursor() as cursor:
        for table in _TABLES:
            cursor.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        cursor.executemany(
            "INSERT INTO shop_category (id, name, slug) VALUES (%s, %s, %s)",
            [(i, name, slug) for i, (slug, name) in enumerate(CATEGORIES, start=1)])
        for batch in _batches(products):
            cursor.executemany(
                "INSERT INTO shop_product (id, category_id, name, description, price, stock, "
                "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)", batch)
        SeedMark.objects.create(version=SEED_VERSION, products=products)
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
            # Fold the WAL into the main file so copying shop.sqlite3 alone copies everything.
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return True, time.perf_counter() - started
