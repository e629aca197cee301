"""What coglet loads in a model's process in place of the model's own predictor or trainer.

RunnerPool points ``COG_PREDICT_TYPE_STUB`` / ``COG_TRAIN_TYPE_STUB`` at this file and names
the model's own reference in ``REPLICANT_MODEL_REF`` (``predict.py:Predictor``). This module
loads that class or function and exports it under the same name, unchanged but for one
thing: an exception escaping ``predict``/``run``/``train`` prints its traceback to stderr
first. coglet records what a prediction writes to stderr in its logs, but reports an
exception only as ``Type: message``; this way the traceback is in the prediction's logs.
And input files staged by Replicant reach coglet as local paths, which it passes on as plain
strings: inputs typed ``Path`` (alone, in a list, or optional) get a ``cog.Path`` of them,
as on Replicate. A ``sys.exit()`` in a run fails it with "SystemExit: <code>" (as Cog says),
a trainer's ``str`` output becomes its weights file (as Cog saves it), and a trainer class
with no ``run``/``predict`` of its own gets one coglet's loader asks for.

A streaming (generator or async generator) predict's logs are kept within
``REPLICANT_MAX_LOG_SIZE`` characters here: coglet copies a streaming prediction's whole logs
on every line it logs (to build its webhook payload), so 10 MB of logs take it a minute and
100 MB hours. The first half of the limit goes through as printed; of the rest only the last
characters that fit are kept, and written when the prediction ends, after a line saying how
many were left out (``held_back_line``). Each prediction's are told apart by their context
(a thread, or an asyncio task), so concurrent predictions keep their own. What the model
writes to the file descriptors itself (C code) is not seen here.

It runs inside the model's environment, so it uses the standard library only.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import importlib.util
import inspect
import os
import pathlib
import sys
import tempfile
import traceback
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

# The end of a generator (``next``'s default).
_END = object()
# Methods of a predictor class whose exceptions are reported (cog's two spellings).
ENTRY_METHODS = ("predict", "run")


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Print the traceback of an Exception escaping the block, from the model's own frames
    on (this module's are left out), then let it propagate."""
    try:
        yield
    except (Exception, SystemExit) as error:
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        traceback.print_exception(type(error), error, tb, file=sys.stderr)
        sys.stderr.flush()
        if isinstance(error, SystemExit):
            # The run fails naming it, as Cog's does ("SystemExit: 1"), not with its bare code.
            raise ModelExited(f"SystemExit: {error.code}") from None
        raise


class ModelExited(Exception):
    """A prediction's ``sys.exit()``: the run fails, its process goes on."""


def held_back_line(size: int) -> str:
    """The line written where a streaming prediction's held-back logs were left out."""
    return f"[replicant: {size} characters of logs were left out here]\n"


class _HeldLogs:
    """What a streaming prediction prints, kept within ``limit`` characters in all: its
    first half passes as printed; past it only the last characters that fit are kept, until
    ``release`` writes them after the line saying how many were left out."""

    def __init__(self, limit: int) -> None:
        self.head = limit // 2
        self.tail = max(limit - self.head - len(held_back_line(10**18)), 0)
        self.passed = 0
        self.left_out = 0
        self.kept: collections.deque[str] = collections.deque()
        self.kept_size = 0

    def write(self, target: Any, text: str) -> int:
        size = len(text)
        if self.passed < self.head:
            through = text[: self.head - self.passed]
            self.passed += len(through)
            target.write(through)
            text = text[len(through) :]
        if text:
            self.kept.append(text)
            self.kept_size += len(text)
        while self.kept and self.kept_size - len(self.kept[0]) >= self.tail:
            first = self.kept.popleft()
            self.kept_size -= len(first)
            self.left_out += len(first)
        return size

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """What this context (thread, or asyncio task) writes to ``sys.stdout`` and
        ``sys.stderr`` goes through this while the block runs; other predictions' does not."""
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not isinstance(stream, _Held):
                setattr(sys, name, _Held(stream))
        token = _HOLDING.set(self)
        try:
            yield
        finally:
            _HOLDING.reset(token)

    def release(self) -> None:
        """Write what was kept, after the line saying how much was left out."""
        text = "".join(self.kept)
        excess = max(len(text) - self.tail, 0)
        left_out = self.left_out + excess
        if left_out:
            sys.stdout.write(held_back_line(left_out))
        sys.stdout.write(text[excess:])
        sys.stdout.flush()
        self.kept.clear()
        self.kept_size = 0


class _Held:
    """A text stream that writes through the ``_HeldLogs`` of the current context, if any;
    the rest is the stream's own."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        held = _HOLDING.get()
        if held is None:
            return int(self._stream.write(text))
        return held.write(self._stream, text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# The held logs of the prediction running in this context (thread or asyncio task).
_HOLDING: contextvars.ContextVar[_HeldLogs | None] = contextvars.ContextVar(
    "replicant_held_logs", default=None
)


def _held_limit() -> int | None:
    try:
        return int(os.environ["REPLICANT_MAX_LOG_SIZE"])
    except (KeyError, ValueError):
        return None


def reporting(fn: Any, weights: bool = False) -> Any:
    """``fn`` (plain, generator, coroutine or async generator) printing the traceback of an
    exception before it propagates; cancellation (not an Exception) passes untouched.

    The stand-in carries ``fn``'s signature: Cog reads inputs, defaults and types from it
    (``inspect.getfullargspec``, which honours ``__signature__``). coglet replaces the
    ``Input(...)`` defaults of the function it loads by their values; the stand-in has none
    of its own, so that is done here on ``fn``, which the stand-in calls. With ``weights``
    (a trainer's ``train``), a ``str`` it returns becomes a file (``_str_weights``)."""
    signature = inspect.signature(fn)
    _plain_defaults(fn)
    wrapper = _reporting(_str_weights(fn) if weights else fn, _path_inputs(fn))
    wrapper.__signature__ = signature
    return wrapper


def _as_weights(output: Any) -> Any:
    if not isinstance(output, str):
        return output
    path = pathlib.Path(tempfile.mkdtemp()) / "weights"
    path.write_text(output, encoding="utf-8")
    return path


def _str_weights(fn: Any) -> Any:
    """``fn`` (a trainer) returning a file of the string it returns: Cog saves a trainer's
    ``str`` output as its weights, and Replicant stores weights from a file."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coro(*args: Any, **kwargs: Any) -> Any:
            return _as_weights(await fn(*args, **kwargs))

        return coro
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        return fn

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        return _as_weights(fn(*args, **kwargs))

    return plain


Convert = Callable[[Any], Any]


def _path_inputs(fn: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that turns the local-path strings of ``fn``'s Path inputs into Paths."""
    try:
        from cog import Path as CogPath

        hints = typing.get_type_hints(fn)
    except Exception:  # no cog here, or hints that do not resolve: leave inputs alone
        return lambda kwargs: kwargs
    converters = {}
    for name, hint in hints.items():
        convert = _converter(hint, CogPath) if name != "return" else None
        if convert is not None:
            converters[name] = convert

    def apply(kwargs: dict[str, Any]) -> dict[str, Any]:
        for name, convert in converters.items():
            if name in kwargs:
                kwargs[name] = convert(kwargs[name])
        return kwargs

    return apply


def _converter(hint: Any, cog_path: type) -> Convert | None:
    if isinstance(hint, type) and issubclass(hint, pathlib.PurePath):
        return lambda v: cog_path(v) if isinstance(v, str) else v
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args:
        inner = _converter(args[0], cog_path)
        if inner is not None:
            return lambda v: [inner(x) for x in v] if isinstance(v, list) else v
    if origin in (typing.Union, getattr(types, "UnionType", typing.Union)):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _converter(options[0], cog_path)
    return None


def _is_input(value: Any) -> bool:
    kind = type(value)
    return kind.__name__ == "FieldInfo" and kind.__module__.startswith("cog")


def _plain_defaults(fn: Any) -> None:
    code = getattr(fn, "__func__", fn)
    if getattr(code, "__defaults__", None):
        code.__defaults__ = tuple(d.default if _is_input(d) else d for d in code.__defaults__)
    if getattr(code, "__kwdefaults__", None):
        code.__kwdefaults__ = {
            k: d.default if _is_input(d) else d for k, d in code.__kwdefaults__.items()
        }


def _reporting(fn: Any, paths: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> Any:
            with _reported():
                limit = _held_limit()
                if limit is None:
                    async for item in fn(*args, **paths(kwargs)):
                        yield item
                    return
                held = _HeldLogs(limit)
                items = fn(*args, **paths(kwargs))
                try:
                    while True:
                        with held.holding():
                            try:
                                item = await items.__anext__()
                            except StopAsyncIteration:
                                return
                        yield item
                finally:
                    held.release()

        return agen
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coro(*args: Any, **kwargs: Any) -> Any:
            with _reported():
                return await fn(*args, **paths(kwargs))

        return coro
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Any:
            with _reported():
                limit = _held_limit()
                if limit is None:
                    return (yield from fn(*args, **paths(kwargs)))
                held = _HeldLogs(limit)
                items = fn(*args, **paths(kwargs))
                try:
                    while True:
                        with held.holding():
                            item = next(items, _END)
                        if item is _END:
                            return None
                        yield item
                finally:
                    held.release()

        return gen

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        with _reported():
            return fn(*args, **paths(kwargs))

    return plain


def _own(fn: Any) -> bool:
    """Whether ``fn`` is the model's code rather than Cog's base class default."""
    return callable(fn) and not str(getattr(fn, "__module__", "") or "").startswith("cog")


def load(ref: str) -> tuple[str, Any]:
    """The model's ``path.py:Name`` loaded as coglet would, and its reporting stand-in."""
    path, _, name = ref.partition(":")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    module_name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(here, path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    target = getattr(module, name)
    training = bool(os.environ.get("COG_TRAIN_TYPE_STUB"))
    if inspect.isclass(target):
        methods = {
            attr: reporting(getattr(target, attr), weights=attr == "train")
            for attr in (*ENTRY_METHODS, "train")
            if _own(getattr(target, attr, None))
        }
        if training and "train" in methods and not any(m in methods for m in ENTRY_METHODS):
            # A trainer class needs no run()/predict() (Cog's training docs); coglet asks
            # for one when it loads a class, so it gets one it never calls.
            methods["run"] = _trainer_only
        namespace = {
            "__module__": target.__module__,
            "__qualname__": target.__qualname__,
            "__doc__": target.__doc__,
            **methods,
        }
        return name, type(target.__name__, (target,), namespace)
    return name, reporting(target, weights=training)


def _trainer_only(self: Any) -> str:
    raise RuntimeError("this class is a trainer: it has no run() or predict()")


if os.environ.get("REPLICANT_MODEL_REF"):
    _name, _entry = load(os.environ["REPLICANT_MODEL_REF"])
    globals()[_name] = _entry
