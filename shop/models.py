"""Tables like the seed's virtu-mall: categories, products, carts, orders with order lines."""

from __future__ import annotations

from django.db import models


class Category(models.Model):
    name = models.CharField(max_length=64, unique=True)
    slug = models.SlugField(max_length=64, unique=True)

    def as_dict(self) -> dict[str, object]:
        return {"id": self.pk, "name": self.name, "slug": self.slug}


class Product(models.Model):
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="products")
    name = models.CharField(max_length=200, db_index=True)
    description = models.TextField()
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.PositiveIntegerField()
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["category", "id"], name="product_category_id")]

    def as_dict(self) -> dict[str, object]:
        """The serialized form list and detail views return (the ?all=1 hazard builds 100k+)."""
        return {
            "id": self.pk,
            "name": self.name,
            "description": self.description,
            "price": str(self.price),
            "stock": self.stock,
            "category": self.category.as_dict(),
            "created_at": self.created_at.isoformat(),
        }


class Cart(models.Model):
    """Keyed by a token the client may choose, so a cart add works on whichever instance a
    round-robin load balancer picks (each instance has its own SQLite copy)."""

    token = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ordered = models.BooleanField(default=False)


class CartLine(models.Model):
    cart = models.ForeignKey(Cart, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()


class Order(models.Model):
    cart = models.OneToOneField(Cart, on_delete=models.PROTECT, related_name="order", null=True)
    """Empty for a direct ("buy now") order."""
    created_at = models.DateTimeField(auto_now_add=True)
    total = models.DecimalField(max_digits=12, decimal_places=2)


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)


class SeedMark(models.Model):
    """What `python -m shop seed` last wrote, so a second identical run can return at once."""

    version = models.PositiveIntegerField()
    products = models.PositiveIntegerField()
