"""One rule for turning YAML / JSON / Python values into config dataclasses (zoo.config)."""

import dataclasses

import pytest

from zoo.config import as_config, config_from_dict


@dataclasses.dataclass
class Inner:
    size: int = 1
    kernel: tuple[int, int] = (3, 3)


@dataclasses.dataclass
class Outer:
    name: str = "a"
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_mappings_nested_fields_and_tuples():
    built = as_config({"name": "b", "inner": {"kernel": [5, 1]}}, Outer)
    assert built == Outer(name="b", inner=Inner(size=1, kernel=(5, 1)))
    assert config_from_dict(Outer, dataclasses.asdict(built)) == built


def test_instances_and_none_pass_through():
    instance = Outer()
    assert as_config(instance, Outer) is instance
    assert as_config(None, Outer) is None


def test_unknown_fields_and_wrong_types_are_named():
    with pytest.raises(TypeError, match=r"Outer.inner: unknown config field\(s\) \['sise'\]"):
        as_config({"inner": {"sise": 2}}, Outer)
    with pytest.raises(TypeError, match="expected Outer or a mapping of its fields, got list"):
        as_config([1], Outer)


def test_every_caller_uses_the_one_rule():
    from zoo import registry
    from zoo.datamodules import speech
    from zoo.lightning_modules import ctc_speech_recognizer
    from zoo.speech import recognizer

    assert speech.as_config is ctc_speech_recognizer.as_config is recognizer.as_config is as_config
    assert registry.config_from_dict is recognizer.config_from_dict is config_from_dict
