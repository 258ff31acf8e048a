"""Tiny Hugging Face checkpoint directories, written by the tests (no hub, no real weights):
a BERT encoder saved as `BertModel` (no MLM head, as sentence-transformers ship MiniLM) with a
WordPiece tokenizer, and a GPT-2 saved as `GPT2LMHeadModel` with a byte-level BPE tokenizer."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXT = ["the capital of zanland is porvo.", "mira was born in 1873 in kelsby.",
        "the river ossa flows into the lake.", "a dictionary defines every word."] * 20


def wordpiece_tokenizer() -> Tokenizer:
    """Lower-case WordPiece over single characters: every facts/GCIDE string encodes."""
    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = BERT_SPECIAL + symbols + [f"##{s}" for s in symbols]
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def bpe_tokenizer() -> Tokenizer:
    """GPT-2 style byte-level BPE with only <|endoftext|> (no pad, no mask)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(TEXT, trainer=trainer)
    return tokenizer


def write_bert(path: Path, with_head: bool = False, seed: int = 0) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertModel
    tokenizer = wordpiece_tokenizer()
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = (BertForMaskedLM if with_head else BertModel)(config)
    model.save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return path


def write_gpt2(path: Path, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel
    tokenizer = bpe_tokenizer()
    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_embd=32, n_layer=2, n_head=2,
                        n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return path
