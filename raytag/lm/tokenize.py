"""Tokenizers and the candidate encoding of verbalized-label examples.

Every example becomes one row per candidate: ``prompt + candidate`` token ids, right-padded.
A causal LM never attends to later positions, so right padding changes nothing before it and
no attention mask is needed (which keeps the model ``torch.func``-friendly). ``score_mask``
marks the positions whose next token is a candidate token: summing the log-probabilities
there gives ``log p(candidate | prompt)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch

from raytag.io import atomic_write_json, read_json

PROMPT_TEMPLATE = "{input}\nAnswer:"
CANDIDATE_TEMPLATE = " {choice}"


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int

    def encode(self, texts: Sequence[str]) -> list[list[int]]: ...


class CharTokenizer:
    """Character vocabulary built offline from the task text (id 0 = pad, 1 = unknown):
    the tiny test/demo model needs no download and no trained merges."""

    SPECIALS = ("<pad>", "<unk>")

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.index = {c: i + len(self.SPECIALS) for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars) + len(self.SPECIALS)
        self.pad_id = 0

    @classmethod
    def fit(cls, texts: Sequence[str], min_count: int = 2) -> "CharTokenizer":
        counts: dict[str, int] = {}
        for text in texts:
            for ch in text:
                counts[ch] = counts.get(ch, 0) + 1
        return cls(sorted(c for c, n in counts.items() if n >= min_count))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [[self.index.get(ch, 1) for ch in text] for text in texts]

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, {"type": "char", "chars": self.chars})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        spec = read_json(path)
        if spec.get("type") != "char":
            raise ValueError(f"{path} is not a character tokenizer file (type={spec.get('type')!r})")
        return cls(spec["chars"])


class HFTokenizer:
    """A Hugging Face tokenizer behind the same two-method interface (no special tokens added)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class CandidateBatch:
    """Rows = (example, candidate); examples' candidates sit in ``slots``.

    ``ids`` int64 [R, L]; ``score_mask`` float32 [R, L] (1 where ids[:, t+1] is a candidate
    token, so logits[:, t] score it); ``slots`` int64 [E, K] row of each candidate (-1 = none);
    ``reference`` int64 [E] the slot whose margin is the example's logit (see ``raytag.lm``).
    """

    ids: torch.Tensor
    score_mask: torch.Tensor
    slots: torch.Tensor
    reference: torch.Tensor

    @property
    def num_examples(self) -> int:
        return int(self.slots.shape[0])

    @property
    def row_example(self) -> torch.Tensor:
        """int64 [R]: the example each row belongs to."""
        valid = self.slots >= 0
        example = torch.arange(self.slots.shape[0], device=self.slots.device)[:, None].expand_as(self.slots)
        out = torch.empty(self.ids.shape[0], dtype=torch.long, device=self.slots.device)
        out[self.slots[valid]] = example[valid]
        return out

    def examples(self, which) -> "CandidateBatch":
        """The batch restricted to some examples (a slice or index tensor), rows renumbered."""
        slots = self.slots[which]
        valid = slots >= 0
        keep = slots[valid]
        renumber = torch.full((self.ids.shape[0],), -1, dtype=torch.long, device=slots.device)
        renumber[keep] = torch.arange(keep.numel(), device=slots.device)
        return CandidateBatch(self.ids[keep], self.score_mask[keep],
                              torch.where(valid, renumber[slots.clamp_min(0)], -1), self.reference[which])

    def to(self, device) -> "CandidateBatch":
        return CandidateBatch(self.ids.to(device), self.score_mask.to(device), self.slots.to(device),
                              self.reference.to(device))


@dataclass(frozen=True)
class EncodedExamples:
    """Token ids of every example's prompt and candidates, batched on demand by ``batch``."""

    prompts: list[list[int]]
    candidates: list[list[list[int]]]
    reference: np.ndarray  # int64 [E]
    pad_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.prompts)

    def num_tokens(self, examples: np.ndarray | None = None) -> int:
        """Tokens the model reads for these examples (all candidate rows, unpadded)."""
        rows = range(len(self)) if examples is None else examples
        return int(sum(self._row_lengths(i).sum() for i in rows))

    def _row_lengths(self, i: int) -> np.ndarray:
        keep = self._prompt_keep(i)
        return np.array([keep + len(c) for c in self.candidates[i]])

    def _prompt_keep(self, i: int) -> int:
        longest = max(len(c) for c in self.candidates[i])
        return max(1, min(len(self.prompts[i]), self.max_length - longest))

    def batch(self, examples: np.ndarray) -> CandidateBatch:
        """Pad the chosen examples' candidate rows (prompts cut from the left to fit ``max_length``)."""
        examples = np.asarray(examples, dtype=np.int64)
        rows, cand_lengths, prompt_lengths, counts = [], [], [], []
        for i in examples:
            keep = self._prompt_keep(int(i))
            prompt = self.prompts[i][len(self.prompts[i]) - keep:]
            counts.append(len(self.candidates[i]))
            for cand in self.candidates[i]:
                rows.append(prompt + cand)
                prompt_lengths.append(len(prompt))
                cand_lengths.append(len(cand))
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        width = int(lengths.max()) if len(rows) else 1
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        position = np.arange(width)[None, :]
        ids[position < lengths[:, None]] = np.concatenate(rows) if rows else []
        start = np.array(prompt_lengths)[:, None] - 1
        score = (position >= start) & (position < start + np.array(cand_lengths)[:, None])
        counts = np.array(counts, dtype=np.int64)
        k = int(counts.max()) if len(counts) else 1
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
        slot = np.arange(k)[None, :]
        slots = np.where(slot < counts[:, None], offsets[:, None] + slot, -1)
        return CandidateBatch(torch.from_numpy(ids), torch.from_numpy(score.astype(np.float32)),
                              torch.from_numpy(slots), torch.from_numpy(self.reference[examples]))


def encode_examples(tokenizer: Tokenizer, inputs: Sequence[str], choices: Sequence[Sequence[str]],
                    reference: np.ndarray, max_length: int) -> EncodedExamples:
    """Tokenize prompts and candidates once; ``reference`` = slot of each example's margin."""
    prompts = tokenizer.encode([PROMPT_TEMPLATE.format(input=text) for text in inputs])
    flat = [CANDIDATE_TEMPLATE.format(choice=c) for options in choices for c in options]
    encoded = tokenizer.encode(flat)
    longest = max(len(c) for c in encoded)
    if longest >= max_length:
        raise ValueError(f"lm.max_length={max_length} is too short: a candidate needs {longest} tokens "
                         "plus at least one prompt token")
    candidates, start = [], 0
    for options in choices:
        candidates.append(encoded[start:start + len(options)])
        start += len(options)
    return EncodedExamples(prompts, candidates, np.asarray(reference, dtype=np.int64), tokenizer.pad_id,
                           int(max_length))
