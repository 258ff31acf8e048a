"""The model card (`README.md`) of an `extmem export --format hf` directory.

What the Hugging Face Hub and a reader need: YAML front matter (`library_name`, `tags`,
`pipeline_tag`, `license` when known), what the model is (our Transformer and its memories:
lookup, readout, placement, layers, table size), how it was trained (steps, tokens, the last
validation metrics the run logged up to the exported checkpoint), the versions that wrote it,
and how to load it: transformers alone does not know `model_type = "extmem"`, so the card
says `pip install "extmem[hf]"` and `import extmem` before `from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from extmem.memory.config import MemoryConfig
from extmem.memory.module import row_width
from extmem.model.config import ModelConfig

TAGS = ("extmem", "external-memory", "memory-layers")
LOOKUP_TAGS = {"product_keys": "product-key-memory", "token": "token-embedding-table",
               "ngram": "ngram-embedding-table", "lsh": "lsh-memory", "router": "mixture-of-experts"}
VAL_KEYS = ("val_loss", "val_ppl", "val_bpb", "val_accuracy", "val_tokens")


@dataclass
class CardFacts:
    """What the card says beyond the model config."""

    name: str                      # the directory's name, the card's title
    architecture: str              # ExtmemForCausalLM / ExtmemForMaskedLM
    parameters: dict[str, int]     # extmem.model.parameter_counts
    run: str = ""                  # the run directory's name
    checkpoint: str = ""           # step-N
    step: int | None = None
    tokens: int | None = None      # training tokens up to the checkpoint, when recorded
    corpus: str = ""
    validation: dict[str, Any] = field(default_factory=dict)  # the last val record <= step
    license: str | None = None


def last_validation(records: list[dict], step: int) -> dict[str, Any]:
    """The last `split = "val"` record of metrics.jsonl at or before `step` ({} if none)."""
    found: dict[str, Any] = {}
    for record in records:
        at = record.get("step")
        if record.get("split") == "val" and isinstance(at, int) and at <= step:
            found = record
    return found


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _memory_rows(model: ModelConfig) -> list[str]:
    rows = []
    for spec in model.memories:
        tables = 1 if spec.share_table else len(spec.layers)
        slots = spec.num_slots(model.vocab_size)
        table = f"{slots:,} x {row_width(spec, model.d_model)} ({spec.table_dtype})"
        if tables > 1:
            table = f"{tables} x {table}"
        elif spec.share_table and len(spec.layers) > 1:
            table += ", shared"
        rows.append(f"| {spec.lookup} | {spec.readout} | {spec.placement} | "
                    f"{', '.join(map(str, spec.layers))} | {table} | {_reads(spec)} |")
    return rows


def _reads(spec: MemoryConfig) -> str:
    """Rows read per token and memory, where the config says it."""
    if spec.lookup == "product_keys":
        return f"{spec.product_keys.heads} x {spec.product_keys.topk}"
    if spec.lookup == "ngram":
        return f"{spec.ngram.heads} x {len(spec.ngram.orders)}"
    if spec.lookup == "router":
        return str(spec.router.topk)
    if spec.lookup == "lsh":
        return str(spec.lsh.heads)
    return "1"


def _front_matter(model: ModelConfig, facts: CardFacts) -> list[str]:
    tags = [*TAGS, *dict.fromkeys(LOOKUP_TAGS[m.lookup] for m in model.memories)]
    lines = ["---", "library_name: extmem"]
    if facts.license:
        lines.append(f"license: {facts.license}")
    lines.append(f"pipeline_tag: {'text-generation' if model.causal else 'fill-mask'}")
    lines += ["tags:", *(f"- {tag}" for tag in tags), "---", ""]
    return lines


def _training(facts: CardFacts) -> list[str]:
    lines = ["## Training", ""]
    done = [f"run `{facts.run}`" if facts.run else "",
            f"checkpoint `{facts.checkpoint}`" if facts.checkpoint else "",
            f"{facts.step:,} steps" if facts.step is not None else "",
            f"{facts.tokens:,} tokens" if facts.tokens is not None else "",
            f"corpus `{facts.corpus}`" if facts.corpus else ""]
    lines += ["Exported from " + ", ".join(d for d in done if d) + ".", ""]
    values = {k: facts.validation[k] for k in VAL_KEYS if k in facts.validation}
    if values:
        lines += [f"Validation at step {facts.validation['step']:,} (the last evaluation "
                  "up to this checkpoint):", "", "| metric | value |", "|---|---|",
                  *(f"| {k} | {_number(v)} |" for k, v in values.items())]
        usage = {name: stats["usage"] for name, stats
                 in (facts.validation.get("memory_usage") or {}).items()
                 if isinstance(stats, dict) and "usage" in stats}
        lines += [f"| memory usage, {name} | {_number(v)} |" for name, v in usage.items()]
    else:
        lines.append("The run logged no validation metrics up to this checkpoint.")
    return [*lines, ""]


def model_card(model: ModelConfig, facts: CardFacts, versions: dict[str, str]) -> str:
    """README.md text for an exported model; `versions` maps package -> version."""
    auto = "AutoModelForCausalLM" if model.causal else "AutoModelForMaskedLM"
    kind = "causal language model" if model.causal else "masked language model (encoder)"
    params = facts.parameters
    lines = [*_front_matter(model, facts), f"# {facts.name}", "",
             f"A {kind} with external memory layers, trained and exported with extmem "
             f"(`extmem export --format hf`): our "
             f"Transformer (`{facts.architecture}`, `model_type: extmem`), in which each memory "
             "is a lookup (which rows to read) x a value table x a readout (how the rows enter "
             "the layer).", "",
             "## Load", "",
             "transformers alone does not know this architecture (it fails with \"model type "
             "`extmem` ... does not recognize this architecture\"). Install extmem and import "
             "it first; it registers the model with the Auto classes (no remote code):", "",
             "```bash", 'pip install "extmem[hf]"', "```", "",
             "```python", "import extmem  # registers model_type \"extmem\" with transformers",
             f"from transformers import {auto}, AutoTokenizer", "",
             f'model = {auto}.from_pretrained("{facts.name}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{facts.name}")', "```", ""]
    if model.causal:
        lines += ["`generate()` works as usual (our own cache, so token / n-gram lookups see "
                  "the earlier tokens).", ""]
    lines += ["`AutoModelForSequenceClassification` puts a new head on the same trunk.", "",
              "## Architecture", "", "| | |", "|---|---|",
              f"| d_model | {model.d_model} |", f"| layers | {model.n_layers} |",
              f"| attention heads | {model.n_heads} |", f"| feed-forward | {model.ffn} |",
              f"| vocabulary | {model.vocab_size:,} |",
              f"| max sequence length | {model.max_seq_len:,} |",
              f"| parameters | {params['total']:,} (memory tables {params['memory_tables']:,}, "
              f"other memory {params['memory_other']:,}, embeddings {params['embeddings']:,}, "
              f"core {params['core']:,}) |", ""]
    if model.memories:
        lines += ["### Memories", "",
                  "| lookup | readout | placement | layers | table (rows x width) | reads per "
                  "token |", "|---|---|---|---|---|---|", *_memory_rows(model), ""]
    else:
        lines += ["No memory layers (a dense baseline).", ""]
    lines += _training(facts)
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
              "## License", "",
              f"{facts.license}." if facts.license else
              "Not recorded by the run: set `license:` in the front matter above before "
              "sharing (the training data's terms apply).", ""]
    return "\n".join(lines)
