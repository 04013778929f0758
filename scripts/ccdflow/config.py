"""The workflow's configuration outside Snakemake: the same files, schema and defaults.

``snakemake`` validates ``config/config.yaml`` (plus ``--configfile`` layers) against
``workflow/schemas/config.schema.yaml`` and fills in defaults; :func:`load` does the same
for the ``ccdflow`` command, so ``ccdflow inspect`` sees exactly what a run would see.
"""

__all__ = ["ConfigError", "check", "explain", "load"]

from pathlib import Path

#: Repository root (holds config/ and workflow/).
ROOT = Path(__file__).resolve().parents[2]


def _merge(base, layer):
    """Recursive dict update, as Snakemake layers config files."""
    out = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, sub in properties.items():
            if isinstance(instance, dict) and "default" in sub:
                instance.setdefault(name, sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    import jsonschema

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load(configfiles=(), overrides=None):
    """Configuration = config/config.yaml, then each file of ``configfiles``, then
    ``overrides``; validated by the schema, defaults filled in.

    Raises
    ------
    ConfigError
        One line naming the offending key, its value, what was expected (`explain`).
    """
    import jsonschema
    import yaml

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text()) or {}
    for path in configfiles:
        config = _merge(config, yaml.safe_load(Path(path).read_text()) or {})
    config = _merge(config, overrides or {})
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    check(config, schema)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    # defaults of nested objects appear as they are filled in: validate twice
    validator.validate(config)
    validator.validate(config)
    return config


class ConfigError(ValueError):
    """A configuration that the schema refuses; the message is one line for people."""


#: How a JSON-schema type reads in a message.
_TYPES = {
    "number": "a number",
    "integer": "an integer",
    "string": "a string",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping of keys",
    "null": "null",
}


def check(config, schema):
    """Raise :class:`ConfigError` (one line, `explain`) if ``config`` does not satisfy
    ``schema`` (a dict, or the path of a YAML file); ``config`` is not modified.

    Run before Snakemake's own ``validate`` (which fills in the defaults) so that a user
    error reads as the key, the value and what is expected, not a schema dump.
    """
    import jsonschema
    import yaml

    if not isinstance(schema, dict):
        schema = yaml.safe_load(Path(schema).read_text())
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(config)
    )
    if error is not None:
        raise ConfigError(explain(error, schema))


def explain(error, schema):
    """One line for a ``jsonschema.ValidationError``: the dotted key, the value, what was
    expected and the key's description, e.g. ``config: detector.read_noise = 'abc' is
    not a number or null (Read noise (e-); ...)``."""
    path = [str(p) if isinstance(p, str) else f"[{p}]" for p in error.absolute_path]
    value, kind, expected = error.instance, error.validator, error.validator_value
    if kind == "additionalProperties":
        known = sorted((error.schema.get("properties") or {}).keys())
        unknown = sorted(set(value) - set(known)) if isinstance(value, dict) else []
        key = _dotted(path + unknown[:1])
        text = f"{key} is not a known key (known here: {', '.join(known)})"
        return f"config: {text}{_description(schema, path)}"
    if kind == "required":
        missing = [k for k in expected if isinstance(value, dict) and k not in value]
        key = _dotted(path + missing[:1])
        return f"config: {key} is missing{_description(schema, path + missing[:1])}"
    what = {
        "type": lambda: (
            "is not "
            + " or ".join(
                _TYPES.get(t, t) for t in ([expected] if isinstance(expected, str) else expected)
            )
        ),
        "enum": lambda: "is not one of " + ", ".join(map(repr, expected)),
        "minimum": lambda: f"is below the minimum {expected}",
        "maximum": lambda: f"is above the maximum {expected}",
        "exclusiveMinimum": lambda: f"must be greater than {expected}",
        "exclusiveMaximum": lambda: f"must be less than {expected}",
        "minItems": lambda: f"has fewer than {expected} items",
        "maxItems": lambda: f"has more than {expected} items",
        "pattern": lambda: f"does not match the pattern {expected}",
        "anyOf": lambda: "is not " + _alternatives(expected),
    }.get(kind, lambda: f"is not valid: {error.message}")()
    return f"config: {_dotted(path)} = {value!r} {what}{_description(schema, path)}"


def _alternatives(schemas):
    """``a number, 'header', 'measured' or null`` for the sub-schemas of an ``anyOf``."""
    names = []
    for sub in schemas:
        kinds = sub.get("type", [])
        names += [_TYPES.get(t, t) for t in ([kinds] if isinstance(kinds, str) else kinds)]
        names += ["null" if v is None else repr(v) for v in sub.get("enum", [])]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def _dotted(path):
    return ".".join(path).replace(".[", "[") or "(top level)"


def _description(schema, path):
    """`` (description)`` of the deepest key along ``path`` that has one, else ``''``."""
    found, node = schema.get("description", ""), schema
    for part in path:
        node = _resolve(schema, node)
        if part.startswith("["):
            node = node.get("items") or {}
        else:
            node = (node.get("properties") or {}).get(part) or {}
        node = _resolve(schema, node)
        found = node.get("description", found)
    text = " ".join(str(found).split())
    return f" ({text})" if text else ""


def _resolve(schema, node):
    ref = node.get("$ref", "") if isinstance(node, dict) else ""
    if ref.startswith("#/"):
        for part in ref[2:].split("/"):
            schema = schema[part]
        return {**schema, **{k: v for k, v in node.items() if k != "$ref"}}
    return node if isinstance(node, dict) else {}
