"""Each memory component is built by name from a registry whose names are exactly the ones
MemoryConfig's Literal fields allow, so a name is either built or rejected, never guessed."""

from typing import get_args, get_type_hints

import pytest

from extmem.errors import ConfigError
from extmem.memory.config import LOOKUPS, PLACEMENTS, READOUTS, MemoryConfig
from extmem.memory.module import LOOKUP_BUILDERS, READOUT_BUILDERS, build_lookup, build_readout


def allowed(field: str) -> tuple[str, ...]:
    return get_args(get_type_hints(MemoryConfig)[field])


def test_registry_names_are_the_literal_values():
    assert tuple(LOOKUP_BUILDERS) == allowed("lookup") == LOOKUPS
    assert tuple(READOUT_BUILDERS) == allowed("readout") == READOUTS
    assert allowed("placement") == PLACEMENTS


@pytest.mark.parametrize("field, typo", [("lookup", "tokn"), ("readout", "gatd"),
                                         ("placement", "paralel_ffn")])
def test_a_misspelt_name_is_rejected_not_guessed(field, typo):
    with pytest.raises(ConfigError, match=rf"^memory\.{field}: '{typo}' is not allowed; "
                                          "choose one of "):
        MemoryConfig(**{field: typo})


def test_a_name_changed_after_validation_is_not_built():
    cfg = MemoryConfig()
    cfg.lookup = "tokn"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"memory\.lookup: 'tokn' is not allowed"):
        build_lookup(cfg, 16, 40, 0)
    cfg = MemoryConfig()
    cfg.readout = "gatd"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"memory\.readout: 'gatd' is not allowed"):
        build_readout(cfg, 16, 16)
