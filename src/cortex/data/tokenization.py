"""Where strings become ids: the protein tokenizer and the token masks every root tokenizer must provide.

The protein vocabulary keeps the original cortex ids (spec section 8.3) so that converted checkpoints and
parity fixtures line up: 0 <cls>, 1 <pad>, 2 <eos>, 3 <unk>, 4-23 the 20 amino acids (in the original's
frequency order), 24-27 the ambiguous residues B U Z O, 28 '.', 29 '-', 30 <null_1>, 31 <mask>.
Like the original, no <cls>/<eos> is added to a sequence.

Sequences are plain strings of residues ("MKTAYIAK"); whitespace between residues is accepted and ignored,
and special tokens may be written inline ("MK<mask>AY").
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PROTEIN_VOCAB: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)  # fmt: skip
CANONICAL_AMINO_ACIDS: str = "LAGVSERTIDPKQNFYMHWC"
AMBIGUOUS_RESIDUES: str = "BUZO"
# Tokens a corruption process may never change (spec 5.6: '-' and B/U/Z/O remain corruptible).
PROTEIN_NOT_CORRUPTIBLE: frozenset[str] = frozenset(
    {"<unk>", "<eos>", "<pad>", "<cls>", "<mask>", ".", "<null_1>"}
)
# Tokens a sampler may never propose (spec 7.2 step 3: '-' is samplable, ambiguous residues are not).
PROTEIN_NOT_SAMPLABLE: frozenset[str] = PROTEIN_NOT_CORRUPTIBLE | frozenset(AMBIGUOUS_RESIDUES)


def _build_backend() -> Tokenizer:
    vocab = {token: i for i, token in enumerate(PROTEIN_VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Split into special tokens written inline ("<mask>") or single non-space characters.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"<[^<>\s]+>|\S"), behavior="isolated")]
    )
    return backend


class ProteinTokenizer(PreTrainedTokenizerFast):
    """Character-level protein tokenizer with the original cortex vocabulary (32 tokens).

    Besides the usual HF API it knows which tokens may be corrupted and which may be sampled:
    `corruptible_token_mask` and `samplable_token_mask` are (V,) bool tensors indexed by token id.
    """

    vocab_files_names: ClassVar[dict[str, str]] = {"tokenizer_file": "tokenizer.json"}
    model_input_names: ClassVar[list[str]] = ["input_ids", "attention_mask"]
    padding_side = "right"

    def __init__(
        self, tokenizer_file: str | None = None, tokenizer_object: Tokenizer | None = None, **kwargs
    ):
        if tokenizer_object is None and tokenizer_file is None:
            tokenizer_object = _build_backend()
        kwargs.setdefault("cls_token", "<cls>")
        kwargs.setdefault("pad_token", "<pad>")
        kwargs.setdefault("eos_token", "<eos>")
        kwargs.setdefault("unk_token", "<unk>")
        kwargs.setdefault("mask_token", "<mask>")
        kwargs.setdefault("additional_special_tokens", ["<null_1>"])
        kwargs.setdefault("model_max_length", 1024)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(tokenizer_file=tokenizer_file, tokenizer_object=tokenizer_object, **kwargs)
        vocab = self.get_vocab()
        if [vocab.get(token) for token in PROTEIN_VOCAB] != list(range(len(PROTEIN_VOCAB))):
            raise ValueError(
                f"ProteinTokenizer vocabulary does not match the cortex protein vocabulary {PROTEIN_VOCAB}; "
                f"got {sorted(vocab, key=vocab.get)}"
            )

    @property
    def corruptible_token_mask(self) -> torch.Tensor:
        """(V,) bool: True for tokens a corruption process may change."""
        return torch.tensor([t not in PROTEIN_NOT_CORRUPTIBLE for t in PROTEIN_VOCAB], dtype=torch.bool)

    @property
    def samplable_token_mask(self) -> torch.Tensor:
        """(V,) bool: True for tokens a sampler may propose."""
        return torch.tensor([t not in PROTEIN_NOT_SAMPLABLE for t in PROTEIN_VOCAB], dtype=torch.bool)

    @property
    def allowed_characters(self) -> frozenset[str]:
        return frozenset(t for t in PROTEIN_VOCAB if len(t) == 1)

    def get_corruptible_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) bool mask of positions whose token may be corrupted."""
        return self.corruptible_token_mask.to(input_ids.device)[input_ids]

    def validate_sequences(self, sequences: Sequence[str], *, where: str = "sequences") -> None:
        """Raises ValueError naming the first bad sequence: not a string, empty, or with an unknown residue."""
        allowed = self.allowed_characters
        for index, sequence in enumerate(sequences):
            if not isinstance(sequence, str):
                raise ValueError(
                    f"{where}[{index}] is {type(sequence).__name__} {sequence!r}; expected a string of residues"
                )
            residues = _strip_special_tokens(sequence, self.all_special_tokens)
            if not residues and sequence.strip() == "":
                raise ValueError(f"{where}[{index}] is empty; expected at least one residue")
            for position, char in enumerate(residues):
                if char not in allowed:
                    raise ValueError(
                        f"{where}[{index}] has unknown residue {char!r} at position {position} "
                        f"(sequence starts {sequence[:30]!r}); allowed residues: {''.join(sorted(allowed))} "
                        f"and the special tokens {sorted(self.all_special_tokens)}"
                    )


# Whitespace the tokenizer drops: Python's whitespace less the information separators \x1c-\x1f, which str.isspace
# counts but the tokenizer maps to <unk> (found by tests/reliability/test_fuzz.py).
_DROPPED_WHITESPACE = re.compile(r"[^\S\x1c-\x1f]")


def _strip_special_tokens(sequence: str, special_tokens: Iterable[str]) -> str:
    for token in special_tokens:
        sequence = sequence.replace(token, "#")
    return _DROPPED_WHITESPACE.sub("", sequence).replace("#", "A")


def token_masks(tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
    """(corruptible, samplable) (V,) bool masks for any HF tokenizer.

    ProteinTokenizer answers itself; for any other tokenizer (BERT- or ESM-style) special tokens are neither
    corruptible nor samplable, and every other vocabulary entry is both.
    """
    if isinstance(tokenizer, ProteinTokenizer):
        return tokenizer.corruptible_token_mask, tokenizer.samplable_token_mask
    vocab_size = len(tokenizer)
    regular = torch.ones(vocab_size, dtype=torch.bool)
    special_ids = [i for i in tokenizer.all_special_ids if i is not None and 0 <= i < vocab_size]
    regular[special_ids] = False
    for token, index in tokenizer.get_vocab().items():
        if (token.startswith("[") and token.endswith("]")) or (token.startswith("<") and token.endswith(">")):
            regular[index] = False
    return regular, regular.clone()


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike) -> None:
    """Writes a tokenizer so that `load_tokenizer(directory)` (or AutoTokenizer) restores it."""
    tokenizer.save_pretrained(str(directory))


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Loads a tokenizer written by `save_tokenizer` from a local directory; never touches the network."""
    from transformers import AutoTokenizer

    config_path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"no tokenizer_config.json in {directory!s}; expected a saved tokenizer directory"
        )
    with open(config_path) as handle:
        tokenizer_class = json.load(handle).get("tokenizer_class")
    if tokenizer_class == ProteinTokenizer.__name__:
        return ProteinTokenizer.from_pretrained(str(directory), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
