"""The shop is both the Django project and its only app (one package, one `module:callable`)."""

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    default_auto_field = "django.db.models.BigAutoField"
