"""Filters of the prediction and training lists (beyond Replicate), each behind an index.

``status``, ``model``, ``version``, ``deployment`` (predictions only), ``source`` and
``created_after``/``created_before`` combine with each other and with cursor pagination:
the next and previous URLs carry them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, Query
from sqlmodel import col
from sqlmodel.sql.expression import SelectOfScalar

from api.errors import invalid
from replicant.contracts import Status

T = TypeVar("T")


@dataclass
class ListFilters:
    """The filters a list request asked for (None: not filtered by it)."""

    status: Status | None = None
    model: str | None = None
    version: str | None = None
    deployment: str | None = None
    source: Literal["web", "api"] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def apply(
        self, stmt: SelectOfScalar[T], table: Any
    ) -> tuple[SelectOfScalar[T], dict[str, str]]:
        """``stmt`` narrowed to the rows of ``table`` that match, and the query parameters
        that say so (for the cursor URLs)."""
        params: dict[str, str] = {}
        for name in ("status", "model", "version", "deployment", "source"):
            value = getattr(self, name)
            if value is not None:
                stmt = stmt.where(col(getattr(table, name)) == value)
                params[name] = value
        if self.created_after is not None:
            stmt = stmt.where(col(table.created_at) >= self.created_after)
            params["created_after"] = self.created_after.isoformat()
        if self.created_before is not None:
            stmt = stmt.where(col(table.created_at) < self.created_before)
            params["created_before"] = self.created_before.isoformat()
        return stmt, params


def _owner_name(field: str, value: str | None) -> str | None:
    if value is not None and (value.count("/") != 1 or "" in value.split("/")):
        raise invalid([{"field": field, "message": "must be owner/name"}])
    return value


async def training_list_filters(
    status: Status | None = None,
    model: Annotated[str | None, Query(description="owner/name")] = None,
    version: Annotated[str | None, Query(description="a version id")] = None,
    source: Literal["web", "api"] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> ListFilters:
    """The filters of a training list request; 422 naming a malformed one."""
    return ListFilters(
        status=status,
        model=_owner_name("model", model),
        version=version,
        source=source,
        created_after=created_after,
        created_before=created_before,
    )


TrainingFilters = Annotated[ListFilters, Depends(training_list_filters)]


async def list_filters(
    filters: TrainingFilters,
    deployment: Annotated[str | None, Query(description="owner/name")] = None,
) -> ListFilters:
    """The filters of a prediction list request: a training list's, and ``deployment``."""
    return replace(filters, deployment=_owner_name("deployment", deployment))


PredictionFilters = Annotated[ListFilters, Depends(list_filters)]
