"""Which ids of a tokenizer are the document separator (EOS), padding and mask tokens.

Recognises the common conventions, first match wins:

    eos:  <|endoftext|> (extmem, GPT-2), </s> (RoBERTa, Llama, T5), [SEP] (BERT), <eos>,
          <|end_of_text|> (Llama 3)
    pad:  <pad>, [PAD], <|pad|>; none -> the EOS id (GPT-2, Llama)
    mask: <mask>, [MASK]; none -> None (then masked LM is refused)
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from extmem.errors import DataError

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "[SEP]", "<eos>", "<|end_of_text|>")
PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>")
MASK_CANDIDATES = ("<mask>", "[MASK]")
KNOWN_SPECIAL_TOKENS = (*EOS_CANDIDATES, *PAD_CANDIDATES, *MASK_CANDIDATES,
                        "[CLS]", "[UNK]", "<s>", "<unk>", "<|begin_of_text|>")


@dataclass(frozen=True)
class SpecialIds:
    """The ids LMData needs: EOS separates documents, pad fills batches, mask is for MLM."""

    eos: int
    pad: int
    mask: int | None


def _first_id(tokenizer: Tokenizer, candidates: tuple[str, ...]) -> int | None:
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return None


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """EOS, pad and mask ids by the conventions above; DataError when no EOS token exists."""
    eos = _first_id(tokenizer, EOS_CANDIDATES)
    if eos is None:
        raise DataError("the tokenizer has no document-separator token; one of "
                        f"{', '.join(EOS_CANDIDATES)} is needed")
    pad = _first_id(tokenizer, PAD_CANDIDATES)
    return SpecialIds(eos=eos, pad=eos if pad is None else pad,
                      mask=_first_id(tokenizer, MASK_CANDIDATES))
