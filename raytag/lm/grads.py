"""Per-example LoRA gradients of the margin ``z``, projected (fast, factored) or exact.

Each LoRA matrix is a bias-free linear layer, so its per-example gradient is a sum over the
example's candidate rows and tokens of outer products ``δ_t a_tᵀ`` (``a_t`` the layer input,
``δ_t = ∂z/∂(layer output)_t``). The fast path runs one forward with hooks that keep every
LoRA linear's input and output, one ``autograd.grad`` of ``Σ_examples z`` to the outputs
(examples share no computation, so each row's ``δ`` is its own example's), and projects each
token as ``(R_out δ_t) ⊙ (R_in a_t)`` (a ``KroneckerProjector``) before summing tokens — the
``out × in`` gradient never exists. The exact path (``torch.func.vmap`` over ``grad``) forms
the flattened gradient and applies any projector; it is the reference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from raytag.grads import KroneckerProjector, ProjectedGradients, Projector
from raytag.grads.exact import eval_mode
from raytag.lm.scoring import dense_row_logprobs, example_margins, margin_from_table, row_logprobs
from raytag.lm.tokenize import CandidateBatch
from raytag.models.lm import lora_linears


def lora_layer_shapes(model: nn.Module) -> list[tuple[int, int, bool]]:
    """``(out, in, False)`` per LoRA matrix in flattened-gradient order (``KroneckerProjector`` input)."""
    return [(m.out_features, m.in_features, False) for _, m in lora_linears(model)]


def _per_example(batch: CandidateBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows regrouped as ``[E, K, L]`` (missing candidates repeat row 0 and are masked out)."""
    rows = batch.slots.clamp_min(0)
    return batch.ids[rows], batch.score_mask[rows], batch.slots >= 0


def exact_lora_gradients(model: nn.Module, batch: CandidateBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_LoRA z [E, D] flattened in named_parameters order, z [E])`` with ``torch.func``."""
    names, params = zip(*[(n, p.detach()) for n, p in model.named_parameters() if p.requires_grad])
    ids, mask, valid = _per_example(batch)

    def margin(values, ids_e, mask_e, valid_e, reference_e):
        logits = functional_call(model, dict(zip(names, values)), args=(), kwargs={"input_ids": ids_e}).logits
        logp = dense_row_logprobs(logits, ids_e, mask_e)
        return margin_from_table(torch.where(valid_e, logp, torch.full_like(logp, -torch.inf)), reference_e)

    with eval_mode(model):
        grads, values = vmap(grad_and_value(margin), in_dims=(None, 0, 0, 0, 0))(
            params, ids, mask, valid, batch.reference)
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1), values


def exact_projected_lora_gradients(model: nn.Module, batch: CandidateBatch, projector: Projector,
                                   chunk: int = 16) -> ProjectedGradients:
    """The reference path: exact gradients of ``chunk`` examples at a time, then ``projector``."""
    grads, logits = [], []
    for start in range(0, batch.num_examples, chunk):
        g, z = exact_lora_gradients(model, batch.examples(slice(start, start + chunk)))
        grads.append(projector.project(g))
        logits.append(z)
    return ProjectedGradients(torch.cat(grads), torch.cat(logits).float())


class LoRAGradientProjector:
    """Callable ``CandidateBatch -> ProjectedGradients(grads [E, d], logits z [E])`` from one forward
    and one backward with hooks.

    A ``KroneckerProjector`` is applied per token in factored form; any other projector (dense,
    SVD basis) gets the flattened per-example gradient, formed as ``Σ_rows δᵀa`` by a batched
    matmul — cheap for LoRA, whose matrices have a rank-sized side.
    """

    def __init__(self, model: nn.Module, projector: Projector):
        self.model = model
        self.linears = [m for _, m in lora_linears(model)]
        shapes = lora_layer_shapes(model)
        if isinstance(projector, KroneckerProjector) and [tuple(s) for s in projector.layer_shapes] != shapes:
            raise ValueError(f"projector layer shapes {projector.layer_shapes} do not match the model's LoRA "
                             f"matrices {shapes}")
        if projector.D != sum(o * i for o, i, _ in shapes):
            raise ValueError(f"projector expects D={projector.D} but the LoRA matrices hold "
                             f"{sum(o * i for o, i, _ in shapes)} parameters")
        self.projector = projector

    def _factors(self, batch: CandidateBatch):
        """``(z [E], inputs a [R, L, in], deltas δ [R, L, out])`` per LoRA linear."""
        inputs, outputs = [], []

        def keep(_module, args, output):
            inputs.append(args[0].detach())
            outputs.append(output)

        handles = [m.register_forward_hook(keep) for m in self.linears]
        try:
            with eval_mode(self.model), torch.enable_grad():
                z = example_margins(row_logprobs(self.model, batch), batch.slots, batch.reference)
                deltas = torch.autograd.grad(z.sum(), outputs)
        finally:
            for handle in handles:
                handle.remove()
        return z.detach().float(), inputs, deltas

    @torch.no_grad()
    def flat_gradients(self, batch: CandidateBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``(∇_LoRA z [E, D], z [E])`` in ``named_parameters`` order, from the hooks."""
        z, inputs, deltas = self._factors(batch)
        rows = torch.cat([torch.bmm(d.float().transpose(1, 2), a.float()).flatten(1)   # [R, out*in]
                          for a, d in zip(inputs, deltas)], dim=1)
        return torch.zeros(batch.num_examples, rows.shape[1], device=z.device).index_add(
            0, batch.row_example, rows), z

    @torch.no_grad()
    def __call__(self, batch: CandidateBatch) -> ProjectedGradients:
        if not isinstance(self.projector, KroneckerProjector):
            grads, z = self.flat_gradients(batch)
            return ProjectedGradients(self.projector.project(grads), z)
        z, inputs, deltas = self._factors(batch)
        r_out, r_in, _ = self.projector.on(z.device)
        out_coords = [d.float() @ r.T for d, r in zip(deltas, r_out)]     # [R, L, k_out]
        in_coords = [a.float() @ r.T for a, r in zip(inputs, r_in)]       # [R, L, k_in]
        per_row = self.projector.combine(out_coords, in_coords).sum(1)    # Σ_t (R_out δ_t) ⊙ (R_in a_t)
        grads = torch.zeros(batch.num_examples, self.projector.d, device=z.device).index_add(
            0, batch.row_example, per_row)
        return ProjectedGradients(grads, z)


def layer_energy(flat_grads: list[torch.Tensor], shapes: list[tuple[int, int, bool]]) -> list[float]:
    """Mean squared per-example gradient norm of each LoRA matrix (chunks of flattened gradients):
    passed as ``layer_weights`` to ``KroneckerProjector.random`` it spends d where gradients are large."""
    sizes = [o * i for o, i, _ in shapes]
    totals = torch.stack([torch.stack([(part ** 2).sum() for part in g.float().split(sizes, dim=1)])
                          for g in flat_grads]).sum(0)
    return (totals / sum(g.shape[0] for g in flat_grads)).tolist()
