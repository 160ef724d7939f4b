"""`python -m shop seed [--products N] [--force]`: migrate and seed the shop's database.

Run from the project root (or anywhere: the package finds its settings). The database is
`$SHOP_DB_PATH`, else `$SCALELAB_DATA_DIR/shop.sqlite3`, else `<project>/var/shop.sqlite3`,
or whatever `DATABASE_URL` names.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    parser = argparse.ArgumentParser(prog="python -m shop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    seed_cmd = sub.add_parser("seed", help="migrate and write the deterministic data set")
    seed_cmd.add_argument("--products", type=int, default=None,
                          help="number of products (default 150000)")
    seed_cmd.add_argument("--force", action="store_true",
                          help="rewrite the data even if an identical seed is already there")
    args = parser.parse_args(argv)

    import django
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except (ImproperlyConfigured, ValueError) as exc:
        print(f"error: the shop's database settings are invalid ({exc}).", file=sys.stderr)
        return 2
    from django.db import DatabaseError, connection

    from shop.catalog import DEFAULT_PRODUCTS, MAX_PRODUCTS
    from shop.seed import seed

    products = DEFAULT_PRODUCTS if args.products is None else args.products
    if not 1 <= products <= MAX_PRODUCTS:
        print(f"error: --products must be between 1 and {MAX_PRODUCTS}, got {products}.",
              file=sys.stderr)
        return 2
    name = connection.settings_dict["NAME"]
    if connection.vendor == "sqlite":
        try:
            os.makedirs(os.path.dirname(os.path.abspath(name)), exist_ok=True)
        except OSError as exc:
            print(f"error: cannot create the directory for database {name} ({exc.strerror}).",
                  file=sys.stderr)
            return 2
    try:
        wrote, seconds = seed(products, force=args.force)
    except DatabaseError as exc:
        print(f"error: database {name} could not be seeded ({exc}).", file=sys.stderr)
        return 2
    verb = "seeded" if wrote else "already seeded with"
    print(f"{verb} {products} products in {name} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
