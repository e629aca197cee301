"""``DELETE /v1/predictions/{id}`` (beyond Replicate): remove a prediction's data now.

Owner only. A prediction still waiting or running is canceled first (and given a moment to
end, so its last output upload is not left behind); then its input and output are removed
from the read model and the object store, as retention would do later: ``data_removed`` is
true and the prediction itself stays listed.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from sqlmodel import Session

from api.cancels import signal_cancel
from api.launch import wait_done
from api.modelexamples import forget_examples
from api.ownpredictions import PredictionsDep
from api.state import AppState
from replicant import readmodel, responses
from replicant.objectkeys import prediction_prefix
from replicant.tables import TERMINAL_STATUSES

log = logging.getLogger("replicant.api")

router = APIRouter(prefix="/v1", tags=["predictions"])

# How long a canceled run may take to end before its data is removed anyway.
CANCEL_GRACE = 10


@router.delete("/predictions/{prediction_id}", response_model_exclude_unset=True)
async def delete_prediction_data(prediction_id: str, mine: PredictionsDep) -> responses.Prediction:
    """Cancel the prediction if it has not ended, and remove its input and output files."""
    state, db = mine.state, mine.db
    row = await mine.get(prediction_id)
    if row.status not in TERMINAL_STATUSES:
        await _cancel_and_wait(state, prediction_id)
    # A model's example without its data is no example: unmark it.
    await db.run(_forget_examples, prediction_id)
    await asyncio.to_thread(readmodel.remove_data, state.engine, prediction_id)
    store = await state.store()
    files = await asyncio.to_thread(store.delete_prefix, prediction_prefix(prediction_id))
    log.info("event=data_removed prediction=%s files=%d on=request", prediction_id, files)
    return mine.show(await mine.get(prediction_id))


def _forget_examples(session: Session, prediction_id: str) -> None:
    forget_examples(session, prediction_id=prediction_id)
    session.commit()


async def _cancel_and_wait(state: AppState, prediction_id: str) -> None:
    if await signal_cancel(state, "prediction", prediction_id):
        await wait_done(state, prediction_id, CANCEL_GRACE)
