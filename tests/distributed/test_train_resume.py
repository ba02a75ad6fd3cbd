"""θ* training resumes after a crash by re-running the same stage, and ends where an
uninterrupted run ends."""

import numpy as np
import pytest
import torch

from run_helpers import copy_run
from raytag.models import load_model
from raytag.pipeline import run_stage


def test_crashed_training_resumes_to_the_same_model(tiny_run, tmp_path, monkeypatch):
    run, config = tiny_run
    resumed = copy_run(run, tmp_path / "resumed")
    monkeypatch.setenv("RAYTAG_FAIL_AFTER_EPOCH", "2")
    with pytest.raises(Exception, match="injected failure|Training failed|TrainingFailed"):
        run_stage(resumed, config, "train", force=True)
    state = torch.load(resumed.root / "model" / "train_state.pt", weights_only=True)
    assert len(state["history"]) == 2  # two epochs were saved before the crash
    monkeypatch.delenv("RAYTAG_FAIL_AFTER_EPOCH")
    assert run_stage(resumed, config, "train")  # same command again: resumes at epoch 3
    state = torch.load(resumed.root / "model" / "train_state.pt", weights_only=True)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]
    original, again = load_model(run.checkpoint), load_model(resumed.checkpoint)
    for a, b in zip(original.state_dict().values(), again.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
