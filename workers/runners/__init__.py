"""The pool of warm coglet processes that the run activity hands predictions to.

One coglet process (Cog's own prediction server) per runner key, e.g. per version. coglet
has one slot unless the model asks for more (cog.yaml ``concurrency.max``, an async
predictor), so a process runs that many predictions at once and no more: per-process slots
(a semaphore) make sure of it, and further concurrent runs get a process of their own.

How a prediction reaches coglet, and why (measured with coglet 0.23.1, hello-world, p50):

- ``PUT /predictions/{id}`` without a webhook answers the terminal prediction: ~2.9 ms.
- the same with a ``webhook`` URL: ~10 ms, because coglet builds a new HTTP client per
  prediction that carries a webhook, loading the whole CA store (~7 ms) before it answers.

So the request is always synchronous (the response is the authoritative terminal state, and a
dropped connection makes coglet cancel), and a webhook is added only when it is needed: when
the caller wants live updates and the model streams output (an iterator: told by
``RunnerSpec.streams_output``, from the version's schema; else learned from coglet's own log,
which reports ``is_stream`` for a plain list too, so a version without a schema streams to
be safe). Live logs of every other model come for
free from coglet's stderr, where it writes each log line of a prediction, tagged with its id,
as it happens. The same stream fills in the logs that coglet leaves out of the synchronous
answer of a failed or canceled prediction.

Modules, one concern each:

- ``coglet``: coglet's wire protocol and error texts, as pure functions.
- ``process``: one coglet process (environment, start, output, kill).
- ``run``: the one object of a prediction (what coglet reported, its stop) and the runs
  in flight.
- ``client``: HTTP to coglet (predictions through aiohttp, the rest through httpx).
- ``processes``: the warm processes by key, their boots, eviction.
- ``memory``: each process tree's memory, the shared warm-memory budget, the /metrics series.
- ``cgroups``: a memory cgroup per process with the worker's limit, and its OOM kills.
- ``devices``: GPU devices, the slots that own them, where a process boots.
- ``execution``: one prediction on a process: PUT, live updates, failure, cancel.
- ``receiver``: the embedded HTTP server (webhooks, uploads, weights, standbys).
- ``weights``, ``standby``: stored weights served to models; fine-tune standbys.
- ``config``: ``PoolConfig``, what a pool is made of and which resources it shares.
- ``pool``: ``RunnerPool``, the public interface.
"""

from replicant.runner import BootError, CogPrediction, RunnerSpec, UploadSink
from workers.runners.config import PoolConfig
from workers.runners.pool import RunnerPool

__all__ = ["BootError", "CogPrediction", "PoolConfig", "RunnerPool", "RunnerSpec", "UploadSink"]
