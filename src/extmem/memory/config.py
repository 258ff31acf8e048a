"""Configuration of one external memory: `Memory = Lookup x Table x Readout` at some layers.

Lookups, readouts and placements: docs/design-space.md. Defaults follow the papers: product keys
as in Lample et al. 2019 (4 heads, top-32, 512 sub-keys per half = 262,144 slots, query width
256); the placement default is `parallel_ffn` (ResM) because Kim & Jung 2020 ("Large Product
Key Memory for Pretrained Language Models") find it crucial for memory usage and quality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from extmem.config import require, require_valid_fields

# The names a MemoryConfig accepts; extmem.memory.module builds the lookup / readout of each
# name from a registry with exactly these keys, and every placement check uses PLACEMENTS.
Placement = Literal["replace_ffn", "parallel_ffn", "input"]
Lookup = Literal["product_keys", "token", "ngram", "lsh", "router", "engram"]
Readout = Literal["add", "gated", "memory_plus", "concat", "experts", "engram"]
PLACEMENTS: tuple[str, ...] = get_args(Placement)
LOOKUPS: tuple[str, ...] = get_args(Lookup)
# lookups whose rows depend on the token ids only, so they can be gathered ahead (memory.prefetch)
TOKEN_ID_LOOKUPS: tuple[str, ...] = ("engram", "token", "ngram")
READOUTS: tuple[str, ...] = get_args(Readout)


def _dropout_ok(prefix: str, name: str, value: float) -> None:
    require(0.0 <= value < 1.0, f"{prefix}.{name}: {value} must be in [0, 1)")


@dataclass
class ProductKeyConfig:
    """Product-key search (Lample et al. 2019, section 3.2)."""

    n_keys: int = 512          # sub-keys per half; the memory has n_keys**2 slots
    heads: int = 4             # independent query heads, each reads `topk` slots
    topk: int = 32             # slots read per head (and candidates kept per half)
    key_dim: int = 256         # query width per head; each half-key has key_dim // 2
    # LayerNorm is the safe default: BatchNorm is best in Lample's paper but leaks statistics
    # across positions of a causal LM and must ignore padding (`MaskedBatchNorm` does).
    # "layernorm" normalises the whole query (all heads together); "layernorm_per_head" each
    # head's key_dim on its own (as lucidrains' product-key-memory normalises per head), with
    # the same per-feature gain and bias: the two are equal when heads = 1.
    query_norm: Literal["layernorm", "layernorm_per_head", "batchnorm", "none"] = "layernorm"
    input_dropout: float = 0.0   # on the hidden state before the query network
    query_dropout: float = 0.0   # on the query

    def __post_init__(self) -> None:
        require_valid_fields(self, "product_keys")
        require(self.n_keys >= 1, f"product_keys.n_keys: {self.n_keys} must be >= 1")
        require(self.heads >= 1, f"product_keys.heads: {self.heads} must be >= 1")
        require(1 <= self.topk <= self.n_keys,
                f"product_keys.topk: {self.topk} is impossible with n_keys={self.n_keys}; "
                f"allowed 1 <= topk <= n_keys")
        require(self.key_dim >= 2 and self.key_dim % 2 == 0,
                f"product_keys.key_dim: {self.key_dim} must be even and >= 2 "
                f"(the query is split into two halves)")
        _dropout_ok("product_keys", "input_dropout", self.input_dropout)
        _dropout_ok("product_keys", "query_dropout", self.query_dropout)

    @property
    def num_slots(self) -> int:
        return self.n_keys * self.n_keys


@dataclass
class TokenLookupConfig:
    """Token id -> row. `rows = 0`: one row per vocabulary entry (a per-layer token table);
    `rows > 0`: ids hashed into `rows` buckets with a fixed random hash (Hash Layers, Roller
    et al. 2021, where the buckets are experts)."""

    rows: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        require_valid_fields(self, "token")
        require(self.rows >= 0, f"token.rows: {self.rows} must be >= 0 (0 = vocabulary size)")
        require(self.seed >= 0, f"token.seed: {self.seed} must be >= 0")


@dataclass
class NgramLookupConfig:
    """Hashed n-grams (Engram 2026; Over-Tokenized Transformers 2025): for each order n, the
    last n ids are combined (multiply by distinct odd constants, XOR) and mapped by `heads`
    independent hashes (modulo distinct primes) into their own segment of a `rows`-row table."""

    orders: list[int] = field(default_factory=lambda: [2, 3])
    heads: int = 2
    rows: int = 16384
    seed: int = 0

    def __post_init__(self) -> None:
        require_valid_fields(self, "ngram")
        require(len(self.orders) > 0 and all(n >= 2 for n in self.orders),
                f"ngram.orders: {self.orders} must list orders >= 2 (unigrams are the token lookup)")
        require(len(set(self.orders)) == len(self.orders), f"ngram.orders: {self.orders} repeats")
        require(self.heads >= 1, f"ngram.heads: {self.heads} must be >= 1")
        segments = len(self.orders) * self.heads
        require(self.rows >= 4 * segments,
                f"ngram.rows: {self.rows} is too small for {segments} hash segments; "
                f"allowed >= {4 * segments}")
        require(self.seed >= 0, f"ngram.seed: {self.seed} must be >= 0")

    @property
    def num_slots(self) -> int:
        return self.rows


def _primes_from(start: int, count: int) -> list[int]:
    """The `count` smallest primes >= start (trial division: tables of up to ~1e12 rows)."""
    primes, n = [], max(start, 2)
    while len(primes) < count:
        if all(n % p for p in range(2, int(n ** 0.5) + 1)):
            primes.append(n)
        n += 1
    return primes


@dataclass
class EngramConfig:
    """Engram (Cheng et al. 2026, "Conditional Memory via Scalable Lookup", DeepSeek, arXiv
    2601.07372): the `engram` lookup (section 2.2: tokenizer compression, then `heads` hashes of
    every suffix n-gram of each order, each into its own table of prime size) and the `engram`
    readout (section 2.3: the heads' rows concatenated into e, the context-aware gate
    sigmoid(RMSNorm(h) . RMSNorm(W_k e) / sqrt(d)) on W_v e, then a short causal depthwise
    convolution with a residual). Defaults are those of the paper and of its reference code
    (deepseek-ai/Engram, engram_demo_v1.py); docs/design-space.md lists them. The row width of
    each head is the memory's `value_dim`."""

    orders: list[int] = field(default_factory=lambda: [2, 3])  # n-gram orders (max N = 3)
    heads: int = 8              # hash heads per order (K), each with its own table
    # rows of each head's table: the smallest prime >= this not taken by an earlier head;
    # 0 = 5 x the vocabulary size (the reference code's tables)
    rows_per_head: int = 0
    compress_tokens: bool = True   # canonical ids: case / NFKC / accents / spaces merged
    seed: int = 0               # hash multipliers are drawn from seed + 10007 * layer
    combine: Literal["concat", "mean"] = "concat"   # e = the heads' rows concatenated (or mean)
    gate: bool = True           # the context-aware gate (off: W_v e)
    gate_sqrt: bool = True      # signed square root of the gate logit (the reference code)
    conv: bool = True           # y = v + SiLU(conv(RMSNorm(v))) on the gated values v
    conv_kernel: int = 4
    conv_dilation: int = 0      # 0 = the largest order
    # the convolution starts at zero: y = v at step 0 (an assumption not checked against the
    # paper; DeepSeek's reference code uses nn.Conv1d's default init: false)
    conv_zero_init: bool = True

    def __post_init__(self) -> None:
        require_valid_fields(self, "engram")
        require(len(self.orders) > 0 and all(n >= 2 for n in self.orders),
                f"engram.orders: {self.orders} must list orders >= 2 (unigrams are the token lookup)")
        require(len(set(self.orders)) == len(self.orders), f"engram.orders: {self.orders} repeats")
        require(self.heads >= 1, f"engram.heads: {self.heads} must be >= 1")
        require(self.rows_per_head == 0 or self.rows_per_head >= 2,
                f"engram.rows_per_head: {self.rows_per_head} must be >= 2 (0 = 5 x vocabulary)")
        require(self.seed >= 0, f"engram.seed: {self.seed} must be >= 0")
        require(self.conv_kernel >= 1, f"engram.conv_kernel: {self.conv_kernel} must be >= 1")
        require(self.conv_dilation >= 0,
                f"engram.conv_dilation: {self.conv_dilation} must be >= 0 (0 = the largest order)")

    @property
    def dilation(self) -> int:
        return self.conv_dilation or max(self.orders)

    def table_sizes(self, vocab_size: int = 0, layer_rank: int = 0) -> list[int]:
        """Rows of each (order, head) table, order-major: distinct primes, and distinct across
        layers too, as in the reference code (the layer_rank-th of the memory's layers takes
        the primes after those of the layers before it)."""
        start = self.rows_per_head or 5 * vocab_size
        require(start >= 2, "engram.rows_per_head: 0 (5 x vocabulary) needs the vocabulary size")
        per_layer = len(self.orders) * self.heads
        return _primes_from(start, (layer_rank + 1) * per_layer)[layer_rank * per_layer:]

    def num_slots(self, vocab_size: int = 0) -> int:
        """Slots of the first layer's tables (later layers' primes are a few rows larger)."""
        return sum(self.table_sizes(vocab_size))


@dataclass
class LshLookupConfig:
    """SimHash of the hidden state: `bits` frozen random hyperplanes -> 2**bits buckets, for
    each of `heads` independent hashes (each with its own bucket segment); rows are averaged.
    Default 8 bits x 4 hashes: enough buckets for a small model's distinct states while every
    bucket is still trained often; hyperplanes are drawn anew per layer."""

    bits: int = 8
    heads: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        require_valid_fields(self, "lsh")
        require(1 <= self.bits <= 24, f"lsh.bits: {self.bits} must be in 1..24")
        require(self.heads >= 1, f"lsh.heads: {self.heads} must be >= 1")
        require(self.seed >= 0, f"lsh.seed: {self.seed} must be >= 0")

    @property
    def num_slots(self) -> int:
        return self.heads << self.bits  # a segment of 2**bits buckets per hash


@dataclass
class RouterLookupConfig:
    """Learned softmax routing over `entries` rows, top-k, with the Switch load-balancing loss
    (coefficient `balance_coef`) and an optional router z-loss (`z_loss_coef`)."""

    entries: int = 64
    topk: int = 2
    balance_coef: float = 0.01
    z_loss_coef: float = 0.0

    def __post_init__(self) -> None:
        require_valid_fields(self, "router")
        require(self.entries >= 1, f"router.entries: {self.entries} must be >= 1")
        require(1 <= self.topk <= self.entries,
                f"router.topk: {self.topk} is impossible with entries={self.entries}; "
                "allowed 1 <= topk <= entries")
        require(self.balance_coef >= 0, f"router.balance_coef: {self.balance_coef} must be >= 0")
        require(self.z_loss_coef >= 0, f"router.z_loss_coef: {self.z_loss_coef} must be >= 0")

    @property
    def num_slots(self) -> int:
        return self.entries


@dataclass
class ExpertsConfig:
    """Table rows as expert FFNs d -> hidden -> d (`experts` readout). hidden = 1 with product
    keys is PEER's single-neuron expert (He 2024)."""

    hidden: int = 32
    activation: Literal["gelu", "relu", "silu"] = "gelu"

    def __post_init__(self) -> None:
        require_valid_fields(self, "experts")
        require(self.hidden >= 1, f"experts.hidden: {self.hidden} must be >= 1")


@dataclass
class MemoryConfig:
    """One memory, inserted at each layer in `layers`.

    Placement: `replace_ffn` (Lample), `parallel_ffn` (ResM: beside the FFN), `input` (added to
    the residual stream at the start of the layer). Each layer gets its own lookup, readout and
    table, unless `share_table` (Meta 2024 shared values): then the layers share one table,
    serialised once. `value_dim = 0` means the model width (for `experts`, the row width is
    fixed by the expert shape). `zero_init_output` makes a newly added memory leave the model
    unchanged at step 0 (Kim & Jung 2020: initialise from a dense model). `table_storage` keeps the
    value tables in host memory or a memory-mapped file instead of on the model's device
    (`extmem.memory.host_table`).
    """

    layers: list[int] = field(default_factory=lambda: [0])
    placement: Placement = "parallel_ffn"
    lookup: Lookup = "product_keys"
    readout: Readout = "add"
    value_dim: int = 0
    value_dropout: float = 0.0   # on the read-out values (XLM's value dropout)
    zero_init_output: bool = False
    # The table keeps its random initialisation and is never trained (a control: a hashed
    # n-gram memory against a frozen random table, docs/results.md claim 13).
    freeze_table: bool = False
    share_table: bool = False
    # concat readout only: "projection" projects [h ; row] back to d; "altup" writes the row
    # into AltUp memory blocks (model.altup.extra_blocks) so it widens the token at no extra
    # layer compute (why Baykal et al. 2023, "The Power of External Memory in Increasing
    # Predictive Model Capacity", motivate AltUp)
    concat_into: Literal["projection", "altup"] = "projection"
    # Row-sparse table gradients (docs/performance.md): only rows read this step get a
    # gradient; train the table with a lazy optimizer (train.param_groups optimizer =
    # "lazy_adam" or "rowwise_adagrad"). Off by default: dense AdamW is the reference.
    sparse_updates: bool = False
    # Storage of the value table; "bfloat16" halves the bytes per read (sums stay fp32).
    table_dtype: Literal["float32", "bfloat16"] = "float32"
    # Where the table lives (extmem.memory.host_table, Engram / Gemma 3n style): "device" moves
    # with the model; "host" stays in CPU memory and rows are fetched per read; "mmap" is host
    # memory backed by `table_file` (recreated at build; "" = a file in a temporary directory),
    # so only the parts read are resident, as page cache the kernel can reclaim.
    table_storage: Literal["device", "host", "mmap"] = "device"
    table_file: str = ""
    # Gather the rows of a host / mmap table on a background thread (and, on a GPU, copy them
    # on a side stream) while the earlier layers run (`HostValueTable.prefetch`): the row ids
    # of token-id lookups are known from the tokens before the first layer (Engram's design).
    prefetch: bool = False
    product_keys: ProductKeyConfig = field(default_factory=ProductKeyConfig)
    token: TokenLookupConfig = field(default_factory=TokenLookupConfig)
    ngram: NgramLookupConfig = field(default_factory=NgramLookupConfig)
    lsh: LshLookupConfig = field(default_factory=LshLookupConfig)
    router: RouterLookupConfig = field(default_factory=RouterLookupConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    engram: EngramConfig = field(default_factory=EngramConfig)

    def __post_init__(self) -> None:
        require_valid_fields(self, "memory")
        require(len(self.layers) > 0, "memory.layers: empty; list at least one layer index")
        require(len(set(self.layers)) == len(self.layers),
                f"memory.layers: {self.layers} repeats a layer")
        require(all(layer >= 0 for layer in self.layers),
                f"memory.layers: {self.layers} has a negative index")
        require(self.value_dim >= 0, f"memory.value_dim: {self.value_dim} must be >= 0 "
                "(0 means the model width)")
        require(not (self.readout == "experts" and self.value_dim),
                f"memory.value_dim: {self.value_dim} cannot be set with readout = 'experts' "
                "(rows hold expert weights; set experts.hidden instead)")
        _dropout_ok("memory", "value_dropout", self.value_dropout)
        require(self.table_storage == "device" or self.readout != "experts",
                f"memory.table_storage: {self.table_storage!r} is not supported with readout = "
                "'experts' (expert rows are gathered on the model's device); use 'device'")
        require(not self.table_file or self.table_storage == "mmap",
                f"memory.table_file: {self.table_file!r} needs table_storage = 'mmap' "
                f"(this memory's is {self.table_storage!r})")
        require(not self.table_file or len(self.layers) == 1 or self.share_table,
                f"memory.table_file: one file cannot hold the separate tables of layers "
                f"{self.layers}; set share_table = true or leave table_file empty")
        require(not self.prefetch or self.table_storage in ("host", "mmap"),
                f"memory.prefetch: needs table_storage = 'host' or 'mmap' (this memory's is "
                f"{self.table_storage!r})")
        require(not self.prefetch or self.lookup in TOKEN_ID_LOOKUPS,
                f"memory.prefetch: needs a lookup whose rows depend on the token ids only "
                f"({', '.join(repr(n) for n in TOKEN_ID_LOOKUPS)}); this memory's is "
                f"{self.lookup!r}")
        require(self.concat_into == "projection" or self.readout == "concat",
                f"memory.concat_into: {self.concat_into!r} needs readout = 'concat' "
                f"(this memory's readout is {self.readout!r})")

    def num_slots(self, vocab_size: int = 0) -> int:
        """Rows of this memory's table (its lookup's slots), from the config alone; the token
        lookup with `rows = 0` has one per vocabulary entry (`vocab_size`), the engram lookup
        with `rows_per_head = 0` about five per entry and head."""
        if self.lookup == "token":
            return self.token.rows or vocab_size
        if self.lookup == "engram":
            return self.engram.num_slots(vocab_size)
        return getattr(self, self.lookup).num_slots

    def table_rows(self, vocab_size: int = 0) -> list[int]:
        """Rows of each of this memory's tables: one table per layer (or one, shared). All
        are `num_slots` rows, except an unshared engram memory's, whose later layers take the
        next primes (EngramConfig.table_sizes) and so a few rows more."""
        if self.share_table:
            return [self.num_slots(vocab_size)]
        if self.lookup == "engram":
            return [sum(self.engram.table_sizes(vocab_size, rank))
                    for rank in range(len(self.layers))]
        return [self.num_slots(vocab_size)] * len(self.layers)
