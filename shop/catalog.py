"""Fixed vocabulary of the seeded data. `shop/locustfile.py` repeats CATEGORIES' slugs and a few
SEARCH_TERMS (it must import nothing but locust); tests check the two agree."""

from __future__ import annotations

DEFAULT_PRODUCTS = 150_000
"""`python -m shop seed`'s default: large enough that `?all=1` by two sync workers at once
outgrows a t2.micro (see benchmarks/bench_shop.py), while one at a time fits."""
MAX_PRODUCTS = 5_000_000

CATEGORIES: tuple[tuple[str, str], ...] = tuple((name.lower().replace(" & ", "-")
                                                 .replace(" ", "-"), name) for name in (
    "Books", "Music", "Movies", "Games", "Computers", "Phones", "Cameras", "Audio",
    "Kitchen", "Garden", "Tools", "Furniture", "Lighting", "Bedding", "Toys", "Baby",
    "Sports", "Outdoors", "Fashion", "Shoes", "Jewelry", "Beauty", "Health", "Pets",
))

NOUNS: tuple[str, ...] = (
    "kettle", "lamp", "chair", "backpack", "headphones", "notebook", "blender", "jacket",
    "sneakers", "watch", "camera", "speaker", "keyboard", "mouse", "monitor", "tent",
    "bicycle", "helmet", "mug", "pillow", "blanket", "toaster", "drill", "hammer",
    "guitar", "puzzle", "scarf", "wallet", "perfume", "leash",
)

WORDS: tuple[str, ...] = (
    "premium", "durable", "compact", "wireless", "organic", "classic", "modern", "vintage",
    "portable", "ergonomic", "lightweight", "waterproof", "handmade", "stainless", "bamboo",
    "ceramic", "leather", "cotton", "wool", "steel", "smart", "quiet", "fast", "eco",
    "deluxe", "essential", "everyday", "travel", "family", "studio", "pro", "mini", "max",
    "ultra", "soft", "bright", "warm", "cool", "fresh", "bold", "simple", "elegant", "rugged",
    "gift", "limited", "edition", "original", "comfort", "daily", "outdoor", "indoor", "urban",
    "coastal", "alpine", "desert", "forest", "river", "sunset", "midnight", "golden", "silver",
    "crimson", "azure", "emerald", "ivory", "charcoal", "maple", "walnut", "oak", "cedar",
    "with", "and", "for", "the", "your", "home", "office", "kitchen", "garden", "kids",
)

SEARCH_TERMS: tuple[str, ...] = ("kettle", "wireless", "bamboo", "walnut", "guitar", "alpine",
                                 "crimson", "waterproof", "nothing-matches-this")
