"""The workflow's configuration outside Snakemake: the same files, schema and defaults.

``snakemake`` validates ``config/config.yaml`` (plus ``--configfile`` layers) against
``workflow/schemas/config.schema.yaml`` and fills in defaults; :func:`load` does the same
for the ``ccdflow`` command, so ``ccdflow inspect`` sees exactly what a run would see.
"""

__all__ = ["load"]

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
    jsonschema.ValidationError
        With the path of the offending key.
    """
    import jsonschema
    import yaml

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text()) or {}
    for path in configfiles:
        config = _merge(config, yaml.safe_load(Path(path).read_text()) or {})
    config = _merge(config, overrides or {})
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    # defaults of nested objects appear as they are filled in: validate twice
    validator.validate(config)
    validator.validate(config)
    return config
