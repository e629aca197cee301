"""The one place that connects to Temporal, with the pydantic data converter."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from replicant.settings import Settings


async def connect(settings: Settings) -> Client:
    """A Temporal client for the configured address and namespace."""
    return await Client.connect(
        settings.resolved_temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
    )
