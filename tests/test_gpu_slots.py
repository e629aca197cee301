"""GPU slots through a whole stack without a GPU: a worker told its devices
(`REPLICANT_GPU_DEVICES=0,1`) pins each slot's model processes to its own device, and its
/metrics carries each version's memory."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import replicate
from prometheus_client.parser import text_string_to_metric_families

from replicant.db import make_engine
from replicant.devstack import Stack, free_port
from replicant.settings import Settings
from replicant.versions import create_version, ensure_model
from tests.conftest import schemas_derived_once, stack_settings, suite_database

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ENV_MODEL = """
    import json
    import os
    from cog import BasePredictor

    MARK = {mark!r}
    PROCESS = os.urandom(8).hex()  # which process (pids repeat across sandboxes)

    class Predictor(BasePredictor):
        def predict(self) -> str:
            names = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
            return json.dumps({{"pid": PROCESS, **{{k: os.environ.get(k) for k in names}}}})
"""


TOGETHER_MODEL = """
    import asyncio
    import os
    from cog import BasePredictor

    PROCESS = os.urandom(8).hex()  # which process (pids repeat across sandboxes)

    class Predictor(BasePredictor):
        def setup(self) -> None:
            self.running = 0
            self.all_in = asyncio.Event()

        async def predict(self, expect: int = 2) -> str:
            # Each run waits until `expect` runs are inside this process at once.
            self.running += 1
            if self.running >= expect:
                self.all_in.set()
            try:
                await asyncio.wait_for(self.all_in.wait(), timeout=60)
                return f"{PROCESS} {os.environ.get('CUDA_VISIBLE_DEVICES')} together"
            except asyncio.TimeoutError:
                return f"{PROCESS} {os.environ.get('CUDA_VISIBLE_DEVICES')} alone"
            finally:
                self.running -= 1
"""


@dataclass
class GpuStack:
    settings: Settings
    url: str
    token: str
    versions: list[str]
    together: str


@pytest.fixture(scope="module")
def gpustack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuStack]:
    data_dir = tmp_path_factory.mktemp("gpu-slots")
    with suite_database() as database:
        settings = stack_settings(
            data_dir,
            hardware={"cpu": 1, "gpu-t4": 2},
            gpu_devices="0,1",
            worker_metrics_port=free_port(),
            **database,
        )
        stack = Stack(settings, ui=False, log_dir=data_dir / "logs")
        try:
            with schemas_derived_once():
                token = stack.start()
            engine = make_engine(settings.resolved_database_url)
            model = ensure_model(engine, settings.default_account, "gpuenv", hardware="gpu-t4")
            versions = []
            # Two versions (different files) of one model on the GPU SKU.
            for mark in ("first", "second"):
                src = data_dir / f"gpuenv-{mark}"
                src.mkdir()
                (src / "predict.py").write_text(textwrap.dedent(ENV_MODEL.format(mark=mark)))
                (src / "cog.yaml").write_text('predict: "predict.py:Predictor"\n')
                versions.append(create_version(settings, engine, model, src).id)
            # An async model that serves two predictions at once (cog.yaml concurrency).
            src = data_dir / "together"
            src.mkdir()
            (src / "predict.py").write_text(textwrap.dedent(TOGETHER_MODEL))
            (src / "cog.yaml").write_text(
                'predict: "predict.py:Predictor"\nconcurrency:\n  max: 2\n'
            )
            pair = ensure_model(engine, settings.default_account, "together", hardware="gpu-t4")
            together = create_version(settings, engine, pair, src).id
            engine.dispose()
            yield GpuStack(settings, settings.resolved_public_url, token, versions, together)
        finally:
            stack.stop()


def run(stack: GpuStack, version: str) -> dict[str, object]:
    client = replicate.Client(api_token=stack.token, base_url=stack.url)
    output = client.run(f"{stack.settings.default_account}/gpuenv:{version}", input={})
    seen: dict[str, object] = json.loads(str(output))
    return seen


def test_each_version_on_a_gpu_sku_sees_only_its_slots_device(gpustack: GpuStack) -> None:
    first, second = (run(gpustack, v) for v in gpustack.versions)

    # The second version takes the free slot rather than stopping the first on its device.
    assert {first["CUDA_VISIBLE_DEVICES"], second["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
    assert first["NVIDIA_VISIBLE_DEVICES"] == first["CUDA_VISIBLE_DEVICES"]
    assert second["NVIDIA_VISIBLE_DEVICES"] == second["CUDA_VISIBLE_DEVICES"]
    again = run(gpustack, gpustack.versions[0])
    assert again == first  # the same warm process, on the same device


def test_worker_metrics_carry_each_versions_memory(gpustack: GpuStack) -> None:
    run(gpustack, gpustack.versions[0])
    port = gpustack.settings.worker_metrics_port
    text = httpx.get(f"http://{gpustack.settings.api_host}:{port}/metrics", timeout=30).text
    samples = {
        (sample.name, sample.labels.get("version")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    memory = samples[("replicant_model_memory_bytes", gpustack.versions[0])]
    assert memory > 10 * 1024 * 1024  # coglet and a Python worker: tens of MB at least
    assert samples[("replicant_model_processes", gpustack.versions[0])] >= 1


def test_devices_show_in_the_worker_log(gpustack: GpuStack) -> None:
    log = (Path(gpustack.settings.data_dir) / "logs" / "worker.log").read_text()
    assert "event=gpu_slots" in log and "hardware=gpu-t4" in log and "slots=0;1" in log


def test_a_models_concurrency_runs_its_predictions_in_one_pinned_process(
    gpustack: GpuStack,
) -> None:
    client = replicate.Client(api_token=gpustack.token, base_url=gpustack.url)
    ref = f"{gpustack.settings.default_account}/together:{gpustack.together}"
    # The GPU SKU's two slots take both at once; cog.yaml's concurrency.max: 2 puts them
    # in one process rather than one each.
    with ThreadPoolExecutor(2) as threads:
        outputs = list(threads.map(lambda _: str(client.run(ref, input={})), range(2)))

    assert all(o.endswith(" together") for o in outputs), outputs
    pids = {o.split()[0] for o in outputs}
    devices = {o.split()[1] for o in outputs}
    assert len(pids) == 1 and len(devices) == 1 and devices <= {"0", "1"}
