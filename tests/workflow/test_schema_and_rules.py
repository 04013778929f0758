"""Configuration schema and rule/script consistency (STYLE 2-6)."""

import re

import jsonschema
import pytest
import yaml

from ccdflow import demo
from conftest import REPO, snakemake

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
RULES = sorted(
    m.group(1)
    for smk in (REPO / "workflow/rules").glob("*.smk")
    for m in re.finditer(r"^rule (\w+):", smk.read_text(), re.M)
)


def test_default_config_is_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(CONFIG, SCHEMA)


def test_schema_is_strict_about_unknown_keys():
    bad = {**CONFIG, "calibration": {**CONFIG["calibration"], "flat_flor": 0.2}}
    with pytest.raises(jsonschema.ValidationError, match="flat_flor"):
        jsonschema.validate(bad, SCHEMA)


def test_schema_rejects_out_of_range_values():
    bad = {**CONFIG, "combine": {**CONFIG["combine"], "bias": {"method": "avg"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_every_config_key_is_documented_in_the_schema():
    def walk(schema, config, path):
        props = schema.get("properties", {})
        for key, value in config.items():
            assert key in props, f"{path}{key} is not in the schema"
            sub = props[key]
            if "$ref" in sub:
                sub = SCHEMA["$defs"][sub["$ref"].rsplit("/", 1)[1]]
            if isinstance(value, dict) and "properties" in sub:
                walk(sub, value, f"{path}{key}.")
            else:
                assert sub.get("description") or "$ref" in props[key] or sub.get("type"), key

    walk(SCHEMA, CONFIG, "")


def test_quality_gate_defaults_are_the_library_defaults():
    """STYLE 16: each gate of ccdflow.metrics.GATES has its key in ``selection``, with the
    gate's threshold as the default in config.yaml and in the schema, and bounds."""
    from ccdflow.metrics import GATES

    schema = SCHEMA["properties"]["selection"]["properties"]
    for gate in GATES:
        assert CONFIG["selection"][gate.key] == gate.threshold, gate.key
        assert schema[gate.key]["default"] == gate.threshold, gate.key
        assert "minimum" in schema[gate.key] and "maximum" in schema[gate.key], gate.key
        assert gate.reason in schema[gate.key]["description"], gate.key


def test_illumination_and_flat_kind_defaults_are_the_library_defaults():
    """STYLE 16: calibration.illumination's degree and bin are fit_illumination's defaults
    (config.yaml and schema), off by default; inventory.flat_kinds is FLAT_KINDS."""
    import inspect

    from ccdflow.illumination import fit_illumination
    from ccdflow.inventory import FLAT_KINDS

    defaults = inspect.signature(fit_illumination).parameters
    schema = SCHEMA["properties"]["calibration"]["properties"]["illumination"]["properties"]
    for key in ("degree", "bin"):
        assert CONFIG["calibration"]["illumination"][key] == defaults[key].default, key
        assert schema[key]["default"] == defaults[key].default, key
    assert CONFIG["calibration"]["illumination"]["enabled"] is False
    assert schema["enabled"]["default"] is False
    kinds = SCHEMA["properties"]["inventory"]["properties"]["flat_kinds"]["properties"]
    for kind, values in FLAT_KINDS.items():
        assert tuple(CONFIG["inventory"]["flat_kinds"][kind]) == values, kind
        assert tuple(kinds[kind]["default"]) == values, kind


def test_bad_pixel_defaults_are_the_library_defaults():
    """STYLE 16: every threshold of ccdflow.badpix.DEFAULTS is a key of ``badpix`` with
    the same default in config.yaml and in the schema; each master kind's keys exist."""
    from ccdflow.badpix import DEFAULTS, MASTER_KEYS

    schema = SCHEMA["properties"]["badpix"]["properties"]
    for key, value in DEFAULTS.items():
        assert CONFIG["badpix"][key] == value, key
        assert schema[key]["default"] == value, key
    assert {k for keys in MASTER_KEYS.values() for k in keys} == set(DEFAULTS)
    assert CONFIG["badpix"]["enabled"] is True and CONFIG["badpix"]["user_map"] is None


def test_rules_are_verb_object_and_have_their_script():
    assert {
        "make_master_bias",
        "make_master_dark",
        "make_master_flat",
        "process_frame",
        "select_frames",
        "stack_group",
    } <= set(RULES)
    for rule in RULES:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)+", rule), rule
        script = REPO / "scripts" / f"{rule}.py"
        assert script.exists(), f"rule {rule} has no scripts/{rule}.py"
        text = script.read_text()
        # thin adapter: no numpy arithmetic, one library call
        assert "import numpy" not in text and len(text.splitlines()) <= 45, rule


def test_library_never_imports_snakemake():
    for path in (REPO / "scripts/ccdflow").glob("*.py"):
        assert not re.search(r"^\s*(from|import) snakemake", path.read_text(), re.M), path


def test_the_default_profile_is_loaded(tmp_path):
    """Snakemake finds workflow/profiles/default through the top-level ``profiles`` link;
    without it the profile's settings (keep-going, scheduling) silently never apply."""
    assert (REPO / "profiles/default/config.yaml").resolve() == (
        REPO / "workflow/profiles/default/config.yaml"
    ).resolve()
    night = demo.make_night(tmp_path / "night", preset="test", seed=1)
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, "-n", config={"raw_dir": night["raw_dir"]})
    log = proc.stdout + proc.stderr
    assert re.search(r"Using workflow specific profile \S*profiles/default\b", log), log[:2000]
