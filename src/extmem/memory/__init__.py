"""External memory modules: Memory = Lookup x Table x Readout."""

from extmem.memory.config import MemoryConfig, ProductKeyConfig
from extmem.memory.module import Memory
from extmem.memory.product_keys import ProductKeyLookup
from extmem.memory.stats import UsageCounters
from extmem.memory.table import ValueTable

__all__ = ["Memory", "MemoryConfig", "ProductKeyConfig", "ProductKeyLookup", "UsageCounters",
           "ValueTable"]
