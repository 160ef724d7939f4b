"""The shop's JSON endpoints.

Built the way small Django/DRF apps usually are, hazards included on purpose: the search is a
`LIKE '%kw%'` full scan and `GET /products/?all=1` materializes every product (model instances,
then dicts, then one JSON string) like the seed's unpaginated list did. Bad input always answers
4xx with `{"error": ...}`; only real server faults may answer 5xx.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.core.paginator import EmptyPage, Paginator
from django.db import connection, transaction
from django.db.models import F, Q
from django.http import HttpRequest, HttpResponse, JsonResponse

from shop.models import Cart, CartLine, Category, Order, OrderLine, Product

PAGE_SIZE = 20
MAX_QUANTITY = 100
MAX_QUERY_LEN = 100
MAX_LINES = 50
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_ID = 2**62
"""Larger numbers would overflow the database's 64-bit integers (a 500); they are 4xx instead."""


class BadRequest(Exception):
    """Raised by input parsing; turned into a 4xx JSON answer by `api`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message, "status": status}, status=status)


def api(*methods: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Allow only `methods` (405 JSON otherwise) and turn BadRequest into a JSON 4xx."""

    def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        def handler(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = error(f"method {request.method} not allowed; use "
                                 f"{', '.join(methods)}", 405)
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except BadRequest as exc:
                return error(str(exc), exc.status)

        handler.__name__ = view.__name__
        handler.__doc__ = view.__doc__
        return handler

    return wrap


def json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def positive_int(value: Any, name: str, maximum: int = MAX_ID) -> int:
    """A whole number from 1 to maximum; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadRequest(f"{name} must be a whole number >= 1")
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) < 20):
        raise BadRequest(f"{name} must be a whole number >= 1, got {value[:40]!r}")
    number = int(value)
    if not 1 <= number <= maximum:
        raise BadRequest(f"{name} must be a whole number from 1 to {maximum}, got {number}")
    return number


@api("GET", "HEAD")
def healthz(request: HttpRequest) -> HttpResponse:
    """Cheap, but touches the database so a broken data file fails the health check."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM shop_category LIMIT 1")
            cursor.fetchone()
    except Exception as exc:  # any DB failure means "not healthy", not a 500 traceback
        return JsonResponse({"status": "unavailable", "error": str(exc)}, status=503)
    return JsonResponse({"status": "ok"})


@api("GET", "HEAD")
def product_list(request: HttpRequest) -> HttpResponse:
    products = Product.objects.select_related("category").order_by("id")
    if request.GET.get("all") not in (None, "", "0"):
        # The seed's hazard: no pagination. Every row becomes a model instance, then a dict,
        # then one JSON string held in memory at once — peak RSS grows with the table.
        items = [p.as_dict() for p in list(products)]
        return JsonResponse({"count": len(items), "results": items})
    category = request.GET.get("category")
    if category:
        cat = Category.objects.filter(slug=category).first()
        if cat is None:
            raise BadRequest(f"unknown category {category!r}", 404)
        products = products.filter(category=cat)
    page_number = positive_int(request.GET.get("page", "1"), "page")
    paginator = Paginator(products, PAGE_SIZE)
    try:
        page = paginator.page(page_number)
    except EmptyPage:
        raise BadRequest(f"page {page_number} does not exist; there are "
                         f"{paginator.num_pages} pages", 404) from None
    return JsonResponse({
        "count": paginator.count,
        "num_pages": paginator.num_pages,
        "page": page_number,
        "results": [p.as_dict() for p in page.object_list],
    })


@api("GET", "HEAD")
def product_detail(request: HttpRequest, product_id: int) -> HttpResponse:
    product = Product.objects.select_related("category").filter(
        pk=positive_int(product_id, "product id")).first()
    if product is None:
        raise BadRequest(f"product {product_id} does not exist", 404)
    return JsonResponse(product.as_dict())


@api("GET", "HEAD")
def search(request: HttpRequest) -> HttpResponse:
    """Substring search like the seed's `LIKE '%kw%'`: the count makes it scan the whole table."""
    q = request.GET.get("q", "").strip()
    if not q or len(q) > MAX_QUERY_LEN:
        raise BadRequest(f"q must be 1 to {MAX_QUERY_LEN} characters")
    matches = Product.objects.select_related("category").filter(
        Q(name__icontains=q) | Q(description__icontains=q)).order_by("id")
    count = matches.count()
    return JsonResponse({"q": q, "count": count,
                         "results": [p.as_dict() for p in matches[:PAGE_SIZE]]})


def cart_token(value: Any) -> str:
    if not isinstance(value, str) or not TOKEN_RE.fullmatch(value):
        raise BadRequest("cart_id must be a string of 1 to 64 letters, digits, '-' or '_'")
    return value


def order_items(value: Any) -> list[tuple[int, int]]:
    """`[{"product_id": 7, "quantity": 2}, ...]` -> [(7, 2), ...]; empty is refused."""
    if not isinstance(value, list) or not value:
        raise BadRequest("items must be a non-empty list of {product_id, quantity} objects")
    if len(value) > MAX_LINES:
        raise BadRequest(f"an order may have at most {MAX_LINES} lines, got {len(value)}")
    items = []
    for item in value:
        if not isinstance(item, dict):
            raise BadRequest("each item must be an object with product_id and quantity")
        items.append((positive_int(item.get("product_id"), "product_id"),
                      positive_int(item.get("quantity", 1), "quantity", MAX_QUANTITY)))
    return items


@api("POST")
def cart_add(request: HttpRequest) -> HttpResponse:
    """Add a line: `{"product_id": 7, "quantity": 2, "cart_id": "abc"}`.

    Without cart_id a new cart with a random id is opened; an unknown cart_id opens a cart with
    that id (clients may pick their own, which keeps carts working behind a load balancer).
    """
    body = json_body(request)
    product_id = positive_int(body.get("product_id"), "product_id")
    quantity = positive_int(body.get("quantity", 1), "quantity", MAX_QUANTITY)
    token = uuid.uuid4().hex if body.get("cart_id") is None else cart_token(body["cart_id"])
    with transaction.atomic():
        if not Product.objects.filter(pk=product_id).exists():
            raise BadRequest(f"product {product_id} does not exist", 404)
        cart, _ = Cart.objects.get_or_create(token=token)
        if cart.ordered:
            raise BadRequest(f"cart {token} has already been ordered", 409)
        CartLine.objects.create(cart=cart, product_id=product_id, quantity=quantity)
        lines = CartLine.objects.filter(cart=cart).count()
    return JsonResponse({"cart_id": token, "lines": lines}, status=201)


class _Rollback(Exception):
    def __init__(self, response: JsonResponse) -> None:
        self.response = response


@api("POST")
def order_create(request: HttpRequest) -> HttpResponse:
    """Place an order, all or nothing: from a cart `{"cart_id": "abc"}`, or directly ("buy
    now") from `{"items": [{"product_id": 7, "quantity": 2}]}`.

    A cart is claimed with a conditional UPDATE (ordered=False -> True) and stock is taken with
    `stock >= quantity` conditional UPDATEs, all in one transaction, so concurrent orders of one
    cart produce exactly one order and stock never goes negative — on SQLite (IMMEDIATE
    transactions) as on PostgreSQL/MySQL (row locks).
    """
    body = json_body(request)
    has_cart, has_items = body.get("cart_id") is not None, body.get("items") is not None
    if has_cart == has_items:
        raise BadRequest("send exactly one of cart_id or items")
    try:
        with transaction.atomic():
            cart = None
            if has_cart:
                token = cart_token(body["cart_id"])
                cart = Cart.objects.filter(token=token).first()
                if cart is None:
                    raise BadRequest(f"cart {token} does not exist", 404)
                items = list(CartLine.objects.filter(cart=cart).order_by("id")
                             .values_list("product_id", "quantity"))
                if not items:
                    raise BadRequest(f"cart {token} is empty; add a line with POST /cart/ first")
                if not Cart.objects.filter(pk=cart.pk, ordered=False).update(ordered=True):
                    raise BadRequest(f"cart {token} has already been ordered", 409)
            else:
                items = order_items(body["items"])
            prices = dict(Product.objects.filter(pk__in={pid for pid, _ in items})
                          .values_list("id", "price"))
            total = Decimal("0")
            for product_id, quantity in items:
                if product_id not in prices:
                    raise _Rollback(error(f"product {product_id} does not exist", 404))
                taken = Product.objects.filter(pk=product_id, stock__gte=quantity) \
                    .update(stock=F("stock") - quantity)
                if not taken:
                    raise _Rollback(error(f"product {product_id} has fewer than {quantity} in "
                                          "stock", 409))
                total += prices[product_id] * quantity
            order = Order.objects.create(cart=cart, total=total)
            OrderLine.objects.bulk_create([
                OrderLine(order=order, product_id=pid, quantity=qty, unit_price=prices[pid])
                for pid, qty in items])
    except _Rollback as exc:
        return exc.response
    return JsonResponse({"order_id": order.pk, "cart_id": cart.token if cart else None,
                         "lines": len(items), "total": str(total)}, status=201)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error(f"no route for {request.path}", 404)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error("bad request", 400)


def server_error(request: HttpRequest) -> HttpResponse:
    return error("internal server error", 500)
