"""The language-model path: GradEx / Grad-TAG for instruction tasks with a LoRA-adapted causal LM.

Formulation (why the graph path's estimators apply unchanged). Each example has candidates
``c_1..c_K`` (verbalized labels) and one target. Its score for a candidate is the sequence
log-probability ``log p(c | prompt)``. Its *logit* is the margin of a reference candidate r,

    z = log p(r | prompt) − log Σ_{c ≠ r} p(c | prompt),       label y = [target == r],

with r = the first choice for two-way examples (so y is 0 or 1 like a binary task) and r = the
target otherwise (y = 1). Then ``σ(z) = p(r) / Σ_c p(c)`` and ``BCE(z, y)`` equals the
cross-entropy of the softmax over the example's candidates, exactly — the usual multiple-choice
loss. θ* training, the fine-tune truth (``raytag.lm.train.finetune_subset``) and the estimators'
logistic model ``z ≈ z(θ*) + ĝ·w`` therefore all work on one objective: ``base_logits`` = z at
θ*, ``grads`` = the projected LoRA gradient of z, and each (example, task) is one pair.

Modules: ``tasks`` (JSONL loader, splits), ``tokenize`` (character / HF tokenizers, candidate
rows), ``scoring`` (log-probs, margins, loss), ``grads`` (factored and exact per-example LoRA
gradients), ``train`` (θ* training epochs, deterministic subset fine-tune, group fine-tunes), ``stages``
(run-directory pieces of prepare/train/project), ``finetune`` (a run's θ* and examples for
validate and select --verify), ``config`` (the ``lm:`` config section). The models are in
``raytag.models.lm``; the Ray Train and Ray Data wrappers in ``raytag.distributed.lm_train`` and
``raytag.distributed.lm_project``.
"""
