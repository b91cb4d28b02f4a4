"""The one registry mechanism: names to implementations, imported on lookup."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError
from schemas.registry import Registry, load

REGISTRY: Registry[type] = Registry(
    {"ordered": "collections:OrderedDict", "counter": "collections:Counter"},
    unknown="unknown thing type '{name}' ({where})",
)


def test_a_registered_name_is_imported_on_lookup() -> None:
    import collections

    assert REGISTRY.lookup("ordered", where="x") is collections.OrderedDict
    assert dict(REGISTRY) == {
        "ordered": "collections:OrderedDict",
        "counter": "collections:Counter",
    }


def test_an_unknown_name_is_a_config_error_with_the_registry_s_message() -> None:
    with pytest.raises(ConfigError) as raised:
        REGISTRY.lookup("nope", where="shop/t")
    assert raised.value.message == "unknown thing type 'nope' (shop/t)"
    with pytest.raises(ConfigError) as raised:
        load({"a": "collections:Counter"}, "b", "no b here")
    assert raised.value.message == "no b here"


def test_an_entry_that_does_not_name_module_and_attribute_is_refused() -> None:
    with pytest.raises(ValueError, match="module:attribute"):
        Registry({"bad": "collections.Counter"}, unknown="{name}")
