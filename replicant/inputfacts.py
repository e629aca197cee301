"""What a version's input schema says about each field, derived once per version and reused by
every create and every run of it (versions never change).

``InputFacts`` holds the compiled validator, the ``Secret`` fields and the file fields of one
input component (``Input`` or ``TrainingInput``). ``InputFacts.prepare`` takes one pass over a
create's input and returns what the create path needs: the problems (a 422), the value for the
workflow (``Secret`` inputs sealed), the value for the read model (``Secret`` inputs
redacted), and where the data URIs and long texts are that go to the object store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from replicant.inputfiles import file_fields
from replicant.validation import (
    REDACTED,
    InputChecker,
    InvalidField,
    change_secret,
    secret_fields,
)

# Text inputs longer than this (characters) are stored, not carried in the workflow input.
LONG_TEXT = 64 * 1024

Path = list[str | int]


@dataclass(frozen=True)
class PreparedInput:
    """One create's input after its one pass: see ``InputFacts.prepare``."""

    problems: list[InvalidField]
    sealed: dict[str, Any]  # Secret inputs sealed: what the workflow carries
    redacted: dict[str, Any]  # Secret inputs redacted: what the read model keeps
    data_uris: list[Path] = field(default_factory=list)
    long_texts: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class InputFacts:
    """The facts of one input component of one version's schema."""

    component: str
    checker: InputChecker = field(repr=False)
    secrets: frozenset[str]
    files: dict[str, bool]  # file inputs: name -> whether it is a list of files

    def problems(self, payload: dict[str, Any]) -> list[InvalidField]:
        """Every problem of ``payload`` (see ``replicant.validation.validate_input``)."""
        return self.checker.problems(payload)

    def map_secrets(self, payload: dict[str, Any], change: Callable[[str], Any]) -> dict[str, Any]:
        """A copy of ``payload`` with ``change`` applied to each string of its ``Secret``
        inputs (each item of a ``list[Secret]``)."""
        if not self.secrets:
            return payload
        return {n: change_secret(v, change) if n in self.secrets else v for n, v in payload.items()}

    def redact(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` as the read model keeps it: ``Secret`` values redacted."""
        return self.map_secrets(payload, _redacted)

    def prepare(self, payload: dict[str, Any], seal: Callable[[str], str]) -> PreparedInput:
        """One pass over ``payload``: its problems, its sealed and redacted copies, and
        where its data URIs (in file inputs) and long texts (anywhere else) are. The
        sealed and redacted copies are made only when the input is valid."""
        problems = self.problems(payload)
        if problems:
            return PreparedInput(problems, payload, payload)
        sealed: dict[str, Any] = {}
        redacted: dict[str, Any] = {}
        data_uris: list[Path] = []
        long_texts: list[Path] = []
        for name, plain in payload.items():
            secret = name in self.secrets
            value = sealed[name] = change_secret(plain, seal) if secret else plain
            redacted[name] = change_secret(plain, _redacted) if secret else plain
            listed = isinstance(value, list)
            for index, item in enumerate(value) if listed else [(None, value)]:
                if not isinstance(item, str):
                    continue
                path: Path = [name] if index is None else [name, index]
                in_file = name in self.files and (listed == self.files[name] or index is None)
                if in_file and item[:5].lower() == "data:":
                    data_uris.append(path)
                    continue
                if len(item) > LONG_TEXT:
                    long_texts.append(path)
        return PreparedInput([], sealed, redacted, data_uris, long_texts)


def _redacted(_: str) -> str:
    return REDACTED


_FACTS: LRUCache[tuple[str, str], InputFacts] = LRUCache(maxsize=1024)


def derive(schema: dict[str, Any], component: str = "Input") -> InputFacts:
    """The facts of ``component`` of ``schema`` (uncached); ``KeyError`` when the schema has
    no such component (a version without a trainer has no ``TrainingInput``)."""
    return InputFacts(
        component=component,
        checker=InputChecker.of(schema, component),
        secrets=frozenset(secret_fields(schema, component)),
        files=file_fields(schema, component),
    )


def input_facts(version_id: str, schema: dict[str, Any], component: str = "Input") -> InputFacts:
    """The facts of a version's input ``component``, derived on its first use and kept (a
    version's schema never changes); ``KeyError`` as ``derive``."""
    key = (version_id, component)
    facts = _FACTS.get(key)
    if facts is None:
        facts = _FACTS[key] = derive(schema, component)
    return facts
