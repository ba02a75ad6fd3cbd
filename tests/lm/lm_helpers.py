"""Model helper shared by the LM tests."""

from raytag.models.lm import add_lora, tiny_llama


def tiny_lora_model(vocab_size, rank=2, seed=0):
    """Random B (not zero) so every LoRA matrix has a nonzero gradient."""
    return add_lora(tiny_llama(vocab_size, hidden_size=16, num_layers=2, num_heads=2, max_length=64, seed=seed),
                    rank=rank, alpha=4.0, seed=seed, init_scale=0.3)
