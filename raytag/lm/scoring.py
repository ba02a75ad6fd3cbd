"""Candidate log-probabilities, example margins and the multitask margin loss.

``log p(c | prompt)`` is the sum of the candidate tokens' log-probabilities. An example's logit
is ``z = log p(r) − logsumexp_{c ≠ r} log p(c)`` for its reference candidate ``r`` and its
label is ``[target == r]``, so ``BCE(z, label)`` is exactly the cross-entropy of the softmax
over the example's candidates (see ``raytag.lm``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from raytag.lm.tokenize import CandidateBatch


def causal_lm(model: nn.Module) -> nn.Module:
    """The ``*ForCausalLM`` inside a peft wrapper (LoRA layers are injected in place, so they run)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def row_logprobs(model: nn.Module, batch: CandidateBatch) -> torch.Tensor:
    """``log p(candidate | prompt)`` per row [R]; the LM head runs only at scored positions
    (a 49k-token vocabulary over every position would dominate time and memory)."""
    lm = causal_lm(model)
    hidden = lm.model(input_ids=batch.ids).last_hidden_state           # [R, L, H]
    row, position = torch.nonzero(batch.score_mask[:, :-1], as_tuple=True)
    logits = lm.lm_head(hidden[row, position]).float()                    # [M, V]
    token = batch.ids[row, position + 1]
    picked = logits.gather(1, token[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)
    return torch.zeros(batch.ids.shape[0], dtype=picked.dtype, device=picked.device).index_add(0, row, picked)


def dense_row_logprobs(logits: torch.Tensor, ids: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """Same as ``row_logprobs`` from full ``logits [R, L, V]`` (no data-dependent shapes, so it
    runs under ``torch.func.vmap``; the exact reference path)."""
    logits = logits[:, :-1].float()
    picked = logits.gather(2, ids[:, 1:, None]).squeeze(2) - torch.logsumexp(logits, dim=2)
    return (picked * score_mask[:, :-1]).sum(1)


def example_margins(logp: torch.Tensor, slots: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``z [E] = logp[ref] − logsumexp(logp[other candidates])`` from row log-probs ``[R]``."""
    valid = slots >= 0
    table = torch.where(valid, logp[slots.clamp_min(0)], torch.full_like(slots, -torch.inf, dtype=logp.dtype))
    return margin_from_table(table, reference)


def margin_from_table(table: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``table [..., K]`` candidate log-probs (-inf = no candidate) -> margins ``[...]``."""
    is_reference = torch.arange(table.shape[-1], device=table.device) == reference[..., None]
    chosen = (table * is_reference).nan_to_num(0.0, neginf=0.0).sum(-1)
    others = torch.logsumexp(table.masked_fill(is_reference, -torch.inf), dim=-1)
    return chosen - others


def margins(model: nn.Module, batch: CandidateBatch) -> torch.Tensor:
    return example_margins(row_logprobs(model, batch), batch.slots, batch.reference)


def task_mean_bce(z: torch.Tensor, label: torch.Tensor, weight: torch.Tensor, task: torch.Tensor,
                  num_tasks: int) -> torch.Tensor:
    """Mean over tasks (with weight) of each task's weighted-mean BCE — ``masked_bce``'s normalization."""
    losses = F.binary_cross_entropy_with_logits(z, label.to(z.dtype), reduction="none") * weight
    total = torch.zeros(num_tasks, dtype=z.dtype, device=z.device).index_add(0, task, losses)
    mass = torch.zeros(num_tasks, dtype=z.dtype, device=z.device).index_add(0, task, weight.to(z.dtype))
    present = mass > 0
    return (total[present] / mass[present]).mean()
