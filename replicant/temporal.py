"""The one place that connects to Temporal, with the pydantic data converter."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client, Interceptor, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from replicant import tracing
from replicant.settings import Settings

# Client interceptors of this process: in production only tracing's, when on. A test entry point
# (tests/faultyapi.py) installs fault injectors here before the API starts.
CLIENT_INTERCEPTORS: list[Interceptor] = []


async def connect(settings: Settings) -> Client:
    """A Temporal client for the configured address and namespace."""
    return await Client.connect(
        settings.resolved_temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        interceptors=[*CLIENT_INTERCEPTORS, *tracing.interceptors(settings)],
    )


def is_not_found(err: BaseException) -> bool:
    """Whether Temporal answered "not found" (no such workflow), rather than failing to
    answer at all (unreachable, timed out, refused)."""
    return isinstance(err, RPCError) and err.status == RPCStatusCode.NOT_FOUND


# A describe that gets no answer by then fails (an unreachable Temporal is an error here,
# not a wait: the SDK would retry it for as long as the server is away).
DESCRIBE_TIMEOUT = timedelta(seconds=10)


async def workflow_status(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    """The status of the workflow of this id (running or closed), None when Temporal has
    none; asks the server itself, not its visibility index. Errors other than "not found"
    propagate (a describe unanswered within ``DESCRIBE_TIMEOUT`` among them)."""
    try:
        described = await client.get_workflow_handle(workflow_id).describe(
            rpc_timeout=DESCRIBE_TIMEOUT
        )
    except RPCError as err:
        if is_not_found(err):
            return None
        raise
    return described.status


async def workflow_exists(client: Client, workflow_id: str) -> bool:
    """Whether Temporal has a workflow of this id (running or closed); see ``workflow_status``."""
    return await workflow_status(client, workflow_id) is not None
