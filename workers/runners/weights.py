"""Stored weights served to the model processes: cached per digest, fetched over HTTP."""

from __future__ import annotations

import contextlib
from pathlib import Path

from starlette.responses import FileResponse, Response

from replicant.managedweights import read_manifest
from replicant.runner import BootError
from replicant.weights import WeightsCache, WeightsError, file_name, parse_store_ref
from workers.runners.process import CogletProcess, place_weights

# How often at most a boot looks for sets of managed weights to remove from the cache.
PRUNE_EVERY = 60.0


class ServedWeights:
    """The worker's weights cache, behind URLs of the pool's receiver."""

    def __init__(self, cache: WeightsCache | None) -> None:
        self.cache = cache
        # Stored-weights references by digest, for the model processes that fetch them.
        self._refs: dict[str, str] = {}

    def path(self, ref: str) -> str:
        """The path of the stored weights under a process's links (never expires); known
        before the weights are cached."""
        if self.cache is None:
            raise BootError("this worker has no weights cache for stored weights")
        try:
            key, digest = parse_store_ref(ref)
        except WeightsError as err:
            raise BootError(f"cannot load the version's weights: {err}") from err
        self._refs[digest] = ref
        return f"weights/{digest}/{file_name(key)}"

    @staticmethod
    def of(ref: str | None, digest: str) -> bool:
        """Whether ``digest`` is that of stored weights ``ref`` (a process's own)."""
        if ref is None:
            return False
        try:
            return parse_store_ref(ref)[1] == digest
        except WeightsError:
            return False

    async def fetch(self, ref: str) -> None:
        """Materialize the weights in the cache (once per digest, however many ask)."""
        assert self.cache is not None
        try:
            await self.cache.materialize(ref)
        except WeightsError as err:
            raise BootError(f"cannot load the version's weights: {err}") from err

    async def managed(self, model_dir: Path) -> dict[str, Path]:
        """The directories of a version's managed weights (cog.yaml ``weights:``) by their
        target in the sandbox, assembled in the cache once per digest."""
        weights = read_manifest(model_dir)
        if weights and self.cache is None:
            raise BootError("this worker has no weights cache for cog.yaml's weights:")
        if self.cache is not None:
            # The sets no live process holds any more, unused for their time (at each boot).
            await self.cache.prune(every=PRUNE_EVERY)
        placed = {}
        for weight in weights:
            assert self.cache is not None
            try:
                placed[str(weight["target"])] = await self.cache.assemble(model_dir, weight)
            except (WeightsError, OSError) as err:
                raise BootError(f"cannot place the weights {weight.get('name')}: {err}") from err
        return placed

    def place(self, process: CogletProcess, placed: dict[str, Path]) -> None:
        """Bind the sets at their targets in the process's sandbox; the cache keeps them
        while the process lives."""
        place_weights(process, placed)
        if placed and self.cache is not None:
            self.cache.hold(process, placed.values())

    async def serve(self, digest: str, name: str) -> Response:
        """The weights file, once cached (404 when unknown or not to be had)."""
        if self.cache is None:
            return Response(status_code=404)
        path = self.cache.cached(digest, name)
        ref = self._refs.get(digest)
        if path is None and ref is not None:
            # A model booting while its weights download: answer once they are here.
            with contextlib.suppress(BootError):
                await self.fetch(ref)
            path = self.cache.cached(digest, name)
        if path is None:
            return Response(status_code=404)
        return FileResponse(path, media_type="application/octet-stream")

    async def serve_ref(self, ref: str) -> Response:
        """The weights of a stored reference (a standby's, once adopted)."""
        key, digest = parse_store_ref(ref)
        return await self.serve(digest, file_name(key))
