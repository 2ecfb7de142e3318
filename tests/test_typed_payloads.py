"""Typed payloads: arguments decoded into the handler's annotations, results into its
return annotation (issue 13, point 4)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from typing import TypedDict

import pydantic
import pytest

from streamq import App, JobStatus, SerializationError
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio


class Tier(enum.Enum):
    GOLD = "gold"
    SILVER = "silver"


@dataclasses.dataclass
class Line:
    sku: uuid.UUID
    price: decimal.Decimal
    when: dt.datetime


class Address(TypedDict):
    city: str
    since: dt.date


class Customer(pydantic.BaseModel):
    name: str
    joined: dt.datetime


@dataclasses.dataclass
class Invoice:
    customer: str
    total: decimal.Decimal
    lines: list[Line]
    tier: Tier


async def test_arguments_and_results_keep_their_types(app: App) -> None:
    seen: dict[str, object] = {}

    @app.task(name="invoice")
    async def invoice(
        customer: Customer, lines: list[Line], tier: Tier, address: Address,
        due: dt.date, tags: set[str], note: str = "",
    ) -> Invoice:  # fmt: skip
        seen.update(customer=customer, lines=lines, tier=tier, address=address, due=due,
                    tags=tags)  # fmt: skip
        total = sum((line.price for line in lines), decimal.Decimal(0))
        return Invoice(customer.name, total, lines, tier)

    when = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    lines = [Line(uuid.uuid4(), decimal.Decimal("1.10"), when),
             Line(uuid.uuid4(), decimal.Decimal("2.25"), when)]  # fmt: skip
    job = await invoice.enqueue(
        Customer(name="ada", joined=when), lines, Tier.GOLD,
        Address(city="Paris", since=dt.date(2020, 1, 2)), dt.date(2026, 12, 1), {"a", "b"},
    )  # fmt: skip
    async with running_worker(app):
        result = await job.result(timeout=10)
    assert isinstance(seen["customer"], Customer) and seen["customer"].joined == when
    assert seen["lines"] == lines and seen["tier"] is Tier.GOLD
    assert seen["address"] == {"city": "Paris", "since": dt.date(2020, 1, 2)}
    assert seen["due"] == dt.date(2026, 12, 1) and seen["tags"] == {"a", "b"}
    assert isinstance(result, Invoice)
    assert result.total == decimal.Decimal("3.35") and result.lines == lines
    assert result.tier is Tier.GOLD
    # Another process that only knows the id gets the JSON form (no annotation to use).
    plain = await app.job(job.id).result(timeout=1)
    assert plain["total"] == "3.35" and plain["tier"] == "gold"


async def test_an_argument_that_does_not_fit_its_annotation_is_poison(app: App) -> None:
    """A payload whose value cannot become the declared type goes to the DLQ at once."""

    @app.task(name="when", max_retries=3)
    async def when(at: dt.datetime) -> None:
        return None

    job = await app.enqueue("when", "not a date")
    async with running_worker(app):
        assert await app.job(job.id).wait(timeout=10) == JobStatus.DEAD
    info = await app.job(job.id).info()
    assert info["attempts"] in ("0", "1")


async def test_an_unsupported_value_is_refused_at_enqueue(app: App) -> None:
    @app.task(name="obj")
    async def obj(x: object) -> None:
        return None

    with pytest.raises(SerializationError):
        await obj.enqueue(object())
    with pytest.raises(SerializationError):
        await obj.enqueue(float("nan"))
