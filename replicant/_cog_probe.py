# mypy: ignore-errors
"""Describe a Cog model's inputs and outputs as JSON Schema, from inside the model's own env.

Run as ``python _cog_probe.py <model_dir> <predict_ref> [<train_ref>]`` with cwd=model_dir,
using the Python the model runs with. It imports only the standard library and ``cog``
(never replicant, which that environment may lack), asks cog 0.23's inspector
(``cog._inspector``) for each entry point's inputs and output, and prints one JSON object:

    {"predict": {"input": {...}, "output": {...}, "enums": {...}},
     "train": {...same...} | null, "healthcheck": true | false}

``input`` is the ``Input`` component (properties with ``x-order``, ``title``, ``default``,
bounds...), ``output`` the ``Output`` component, ``enums`` the enum components that inputs
with ``choices`` refer to; ``healthcheck`` says whether the predictor class has a
``healthcheck()`` (its own or inherited, as coglet calls it). replicant.cogmodel wraps these
into a full OpenAPI document.

On failure it prints ``{"error": message, "traceback": text}`` and exits with status 2.
"""

import ast
import dataclasses
import importlib.util
import inspect
import json
import os
import sys
import textwrap
import traceback
import types
import typing
import warnings

# What cog.concurrent raises on a plain function asked for more than one at a time.
_CONCURRENT_SYNC = "concurrent max greater than 1 requires an async function"


def _title(name):
    return name.replace("_", " ").title()


def _number(value):
    # Keep integral bounds integral: `ge=1` reads better as 1 than 1.0 in the schema.
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _load_module(path):
    """Import a model file the way coglet does: by file path, registered under its stem."""
    name = os.path.splitext(os.path.basename(path))[0]
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == os.path.abspath(
        path
    ):
        return name
    spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load module from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return name


def _target(ref, default_names):
    """Return (module_name, attribute name) for a 'file.py:Name' ref."""
    path, _, attr = ref.partition(":")
    module_name = _load_module(path)
    module = sys.modules[module_name]
    if not attr:
        # cog picks Runner, then Predictor, when the ref names only a file.
        attr = next((n for n in default_names if hasattr(module, n)), default_names[0])
    if not hasattr(module, attr):
        raise ValueError(f"{attr} not found in {path}")
    return module_name, attr


def _entry_function(module_name, attr, mode):
    """The function whose signature defines the inputs (predict/run method, or train)."""
    from cog import _inspector

    obj = getattr(sys.modules[module_name], attr)
    if inspect.isclass(obj):
        if mode == "train" and hasattr(obj, "train"):
            return _inspector._unwrap(obj.train), True
        _, fn = _inspector._selected_predict_method(obj, f"{module_name}.{attr}")
        return _inspector._unwrap(fn), True
    return _inspector._unwrap(obj), False


def _predictor_info(module_name, attr, mode):
    from cog import _inspector

    obj = getattr(sys.modules[module_name], attr)
    if mode == "train" and inspect.isclass(obj) and hasattr(obj, "train"):
        # create_predictor() only knows run()/predict(): describe a trainer class's train().
        fn = _inspector._unwrap(obj.train)
        return _inspector._create_predictor_info(module_name, attr, fn, "train", True)
    return _inspector.create_predictor(module_name, attr)


def _declared_defaults(fn, is_method):
    """Map each parameter with a default to that default (an Input() FieldInfo or a value)."""
    spec = inspect.getfullargspec(fn)
    names = spec.args[1:] if is_method else spec.args
    defaults = list(spec.defaults or [])
    return dict(zip(names[len(names) - len(defaults) :], defaults, strict=True))


def _inputs_without_default(fn):
    """Names whose default is an ``Input(...)`` call given no default value, or None if unknown.

    At runtime ``Input(description="x")`` and ``Input(default=None)`` are the same FieldInfo;
    only the source tells a required input from the ``seed: int = Input(default=None)`` idiom.
    """
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    params = node.args.posonlyargs + node.args.args
    with_defaults = params[len(params) - len(node.args.defaults) :]
    missing = set()
    for param, expr in zip(with_defaults, node.args.defaults, strict=True):
        if (
            isinstance(expr, ast.Call)
            and not expr.args
            and all(k.arg not in ("default", None) for k in expr.keywords)
        ):
            missing.add(param.arg)
    return missing


def _json_default(field, value):
    from cog import _adt as adt

    if value is None:
        return None
    if field.type.primitive is adt.PrimitiveType.SECRET:
        return None
    encoded = field.type.json_encode(value)
    json.dumps(encoded)  # fail here, with the field named, rather than later
    return encoded


def _return_hint(fn):
    try:
        return typing.get_type_hints(fn).get("return")
    except Exception:  # noqa: BLE001 - unresolvable hints: Cog's inspector has the say
        return None


def _is_typeddict(tpe):
    return isinstance(tpe, type) and typing.is_typeddict(tpe)


def _value_schema(tpe):
    """The JSON Schema of one output value's type, as Cog's static generator writes it:
    a TypedDict is an object of its fields (``required`` the keys it requires)."""
    from cog import _adt as adt

    if _is_typeddict(tpe):
        hints = typing.get_type_hints(tpe)
        properties = {}
        for name, hint in hints.items():
            properties[name] = {**_value_schema(hint), "title": _title(name)}
        schema = {"type": "object", "properties": properties}
        required = [name for name in hints if name in tpe.__required_keys__]
        if required:
            schema["required"] = required
        return schema
    origin, args = typing.get_origin(tpe), typing.get_args(tpe)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return {**_value_schema(rest[0]), "nullable": True}
    if origin is list and len(args) == 1:
        return {"type": "array", "items": _value_schema(args[0])}
    if origin is dict and len(args) == 2:
        return {"type": "object", "additionalProperties": _value_schema(args[1])}
    try:
        return adt.FieldType.from_type(tpe).json_type()
    except Exception:  # noqa: BLE001 - a type Cog has no primitive for: any JSON object
        return {"type": "object"}


def _describe(module_name, attr, mode, component):
    info = _predictor_info(module_name, attr, mode)
    fn, is_method = _entry_function(module_name, attr, mode)
    declared = _declared_defaults(fn, is_method)
    without_default = _inputs_without_default(fn)

    properties = {}
    required = []
    enums = {}
    for name, field in sorted(info.inputs.items(), key=lambda item: item[1].order):
        raw = declared.get(name, inspect.Parameter.empty)
        prop, is_required, enum = _input_property(name, field, raw, without_default)
        properties[name] = prop
        if is_required:
            required.append(name)
        if enum is not None:
            enums[name] = enum

    input_schema = {"title": component, "type": "object", "properties": properties}
    if required:
        input_schema["required"] = required
    output_schema = info.output.json_type()
    returned = _return_hint(fn)
    if _is_typeddict(returned):
        # Cog's inspector reads a TypedDict as a bare dict; `cog build` lists its fields.
        output_schema = {"title": "Output", **_value_schema(returned)}
    is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
    return {"input": input_schema, "output": output_schema, "enums": enums, "is_async": is_async}


def _input_property(name, field, raw, without_default):
    """One input's schema property, whether it is required, and its enumeration (None: it
    has no choices). ``raw`` is the parameter's declared default, as written."""
    from cog.input import FieldInfo

    field_info = raw if isinstance(raw, FieldInfo) else None
    prop = {"x-order": field.order}
    enum = None
    if field.choices:
        prim = field.type.primitive.json_type().get("type", "string")
        enum = {
            "title": name,
            "description": "An enumeration.",
            "enum": list(field.choices),
            "type": prim,
        }
        prop["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
    else:
        prop["title"] = _title(name)
        prop.update(field.type.json_type())
    required = _set_default(prop, name, field, raw, field_info, without_default)
    _set_constraints(prop, name, field, field_info)
    return prop, required, enum


def _set_default(prop, name, field, raw, field_info, without_default):
    """Put the input's default and nullability in ``prop``, as Cog's static schema has
    them; whether the input is required."""
    from cog import _adt as adt

    nullable = field.type.repetition in (
        adt.Repetition.OPTIONAL,
        adt.Repetition.OPTIONAL_REPEATED,
    )
    if field_info is not None and field_info.default is None:
        given = without_default is not None and name not in without_default
        if not given:
            # Input(description=...) alone (or unreadable source) means no default at all.
            raw = inspect.Parameter.empty
    secret = field.type.primitive is adt.PrimitiveType.SECRET
    default_none = raw is None or (raw is field_info and field_info.default is None)
    if default_none and secret and field.type.repetition is adt.Repetition.REQUIRED:
        # `api_key: Secret = Input(default=None)`: an optional credential, as Cog's
        # static schema has it (unlike the seed idiom below).
        nullable = True
    required = False
    if raw is inspect.Parameter.empty:
        required = not nullable or field.type.union_variants is not None
    elif isinstance(field.default, dataclasses.Field):
        pass  # a default_factory runs at prediction time: optional, no static default
    elif field.default is not None:
        try:
            prop["default"] = _json_default(field, field.default)
        except (TypeError, ValueError) as e:
            raise ValueError(f"default of input {name} is not JSON: {e}") from e
        if prop["default"] is None:
            del prop["default"]
    elif nullable:
        prop["default"] = None
    elif field.type.union_variants is not None or field.type.repetition in (
        adt.Repetition.REQUIRED,
        adt.Repetition.REPEATED,
    ):
        # Cog's static schema: None on a non-nullable input (`seed: int =
        # Input(default=None)`) is no default at all, so the input is required.
        required = True
    if nullable:
        prop["nullable"] = True
    return required


def _set_constraints(prop, name, field, field_info):
    """Put the input's description, bounds, pattern and accepted types in ``prop``."""
    from cog import _adt as adt

    if field.description is not None:
        prop["description"] = field.description
    ge = field_info.ge if field_info is not None else field.ge
    le = field_info.le if field_info is not None else field.le
    if ge is not None:
        prop["minimum"] = _number(ge)
    if le is not None:
        prop["maximum"] = _number(le)
    if field.min_length is not None:
        prop["minLength"] = field.min_length
    if field.max_length is not None:
        prop["maxLength"] = field.max_length
    if field.regex is not None:
        prop["pattern"] = field.regex
    if field.deprecated:
        prop["deprecated"] = True
    accept = getattr(field_info, "accept", None)
    if accept:
        if field.type.primitive not in (adt.PrimitiveType.PATH, adt.PrimitiveType.FILE):
            raise ValueError(f"accept is only valid on Path or File inputs (parameter '{name}')")
        prop["x-cog-accept"] = accept


def _has_healthcheck(module_name, attr):
    """Whether the predictor (a class) has a ``healthcheck()``, defined or inherited."""
    obj = getattr(sys.modules[module_name], attr)
    return inspect.isclass(obj) and callable(getattr(obj, "healthcheck", None))


def main(argv):
    if len(argv) not in (3, 4):
        print("usage: _cog_probe.py <model_dir> <predict_ref> [<train_ref>]", file=sys.stderr)
        return 64
    model_dir, predict_ref = argv[1], argv[2]
    train_ref = argv[3] if len(argv) == 4 and argv[3] else None

    # Whatever the model prints on import must not corrupt our JSON on stdout.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    os.chdir(model_dir)
    # Model files import their siblings; this script's own directory must not shadow them.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.getcwd())
    warnings.simplefilter("ignore", DeprecationWarning)

    try:
        import cog

        result = {"cog_version": cog.__version__, "predict": None, "train": None}
        result["healthcheck"] = False
        if predict_ref:
            module_name, attr = _target(predict_ref, ("Runner", "Predictor"))
            result["predict"] = _describe(module_name, attr, "predict", "Input")
            result["healthcheck"] = _has_healthcheck(module_name, attr)
        if train_ref:
            module_name, attr = _target(train_ref, ("train", "Trainer"))
            result["train"] = _describe(module_name, attr, "train", "TrainingInput")
        payload, status = result, 0
    except BaseException as e:  # noqa: BLE001 - report anything the model raises
        message = f"{type(e).__name__}: {e}"
        if isinstance(e, TypeError) and str(e) == _CONCURRENT_SYNC:
            # cog's decorator refuses at import; say it as `cog build` does.
            message = "@cog.concurrent(max > 1) requires an async run() or predict() method"
        payload = {"error": message, "traceback": traceback.format_exc()}
        status = 2
    with os.fdopen(result_fd, "w", encoding="utf-8") as out:
        json.dump(payload, out)
        out.write("\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
