"""Routes; trailing slashes as in the seed's DRF routers (`/healthz` has none, like ALB checks)."""

from django.urls import path

from shop import views

urlpatterns = [
    path("healthz", views.healthz),
    path("healthz/", views.healthz),
    path("products/", views.product_list),
    path("products/<int:product_id>/", views.product_detail),
    path("search/", views.search),
    path("cart/", views.cart_add),
    path("orders/", views.order_create),
]

handler400 = "shop.views.bad_request"
handler404 = "shop.views.not_found"
handler500 = "shop.views.server_error"
