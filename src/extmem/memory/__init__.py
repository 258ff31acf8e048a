"""External memory modules: Memory = Lookup x Table x Readout."""

from extmem.memory.config import (
                                  EngramConfig,
                                  ExpertsConfig,
                                  LshLookupConfig,
                                  MemoryConfig,
                                  NgramLookupConfig,
                                  ProductKeyConfig,
                                  RouterLookupConfig,
                                  TokenLookupConfig,
)
from extmem.memory.engram import EngramLookup, EngramReadout
from extmem.memory.lsh import LshLookup
from extmem.memory.module import Memory
from extmem.memory.product_keys import ProductKeyLookup
from extmem.memory.router import RouterLookup
from extmem.memory.stats import UsageCounters
from extmem.memory.table import ValueTable
from extmem.memory.token import NgramLookup, TokenLookup

__all__ = ["EngramConfig", "EngramLookup", "EngramReadout", "ExpertsConfig", "LshLookup",
           "LshLookupConfig", "Memory", "MemoryConfig",
           "NgramLookup", "NgramLookupConfig", "ProductKeyConfig", "ProductKeyLookup",
           "RouterLookup", "RouterLookupConfig", "TokenLookup", "TokenLookupConfig",
           "UsageCounters", "ValueTable"]
