import json

import numpy as np
import pytest

from raytag.grads import GradientStore, StoreMismatchError

FIELDS = {"config_hash": "c1", "checkpoint_hash": "k1", "dtype": "float32", "d": 3,
          "projector": {"type": "dense", "D": 10, "d": 3, "kind": "rademacher", "seed": 0}}


def shard_arrays(start, stop, d=3):
    index = np.arange(start, stop)
    return {"grads": np.outer(index, np.arange(1, d + 1)).astype(np.float32),
            "base_logits": index * 0.5, "pair_index": index,
            "task": (index % 4).astype(np.int32), "label": (index % 2).astype(np.float32)}


def test_write_read_in_pair_order_and_resume(tmp_path):
    store = GradientStore.open_or_create(tmp_path, FIELDS)
    store.write_shard(1, shard_arrays(5, 9))
    store.write_shard(0, shard_arrays(0, 5))
    assert store.complete_shards() == [0, 1] and store.is_complete(1) and not store.is_complete(2)
    data = store.read()
    np.testing.assert_array_equal(data["pair_index"], np.arange(9))
    np.testing.assert_array_equal(data["grads"], shard_arrays(0, 9)["grads"])
    assert data["base_logits"].dtype == np.float32 and data["task"].dtype == np.int32
    # reopen with the same identity: complete shards are kept for the resume to skip
    again = GradientStore.open_or_create(tmp_path, dict(FIELDS, n_pairs=9))
    assert again.complete_shards() == [0, 1]
    assert again.sync_manifest()["complete_shards"] == [0, 1]
    assert json.loads((tmp_path / "manifest.json").read_text())["complete_shards"] == [0, 1]


def test_changed_identity_is_refused_and_force_restarts(tmp_path):
    GradientStore.open_or_create(tmp_path, FIELDS).write_shard(0, shard_arrays(0, 4))
    changed = dict(FIELDS, checkpoint_hash="k2", projector=dict(FIELDS["projector"], seed=1))
    with pytest.raises(StoreMismatchError) as error:
        GradientStore.open_or_create(tmp_path, changed)
    message = str(error.value)
    assert "checkpoint_hash" in message and "projector" in message and "seed" in message
    assert "--force" in message and "new run directory" in message
    assert "config_hash" not in message.split("(")[0]
    store = GradientStore.open_or_create(tmp_path, changed, force=True)
    assert store.complete_shards() == []
    assert store.manifest["checkpoint_hash"] == "k2"


def test_partial_shard_is_ignored_and_rewritten(tmp_path):
    store = GradientStore.open_or_create(tmp_path, FIELDS)
    store.write_shard(0, shard_arrays(0, 4))
    # a worker killed mid-shard: one array written, a temp file left, no marker
    partial = tmp_path / "shards" / "shard-000001"
    partial.mkdir(parents=True)
    np.save(partial / "grads.npy", np.zeros((2, 3), np.float32))
    (partial / ".base_logits.npy.abc.tmp").write_bytes(b"garbage")
    assert store.complete_shards() == [0]
    np.testing.assert_array_equal(store.read()["pair_index"], np.arange(4))
    store.write_shard(1, shard_arrays(4, 6))
    np.testing.assert_array_equal(store.read()["grads"], shard_arrays(0, 6)["grads"])


def test_float16_and_consolidated_memmap(tmp_path):
    store = GradientStore.open_or_create(tmp_path, dict(FIELDS, dtype="float16"))
    store.write_shard(0, shard_arrays(0, 3))
    store.write_shard(1, shard_arrays(3, 7))
    data = store.consolidate()
    assert isinstance(data["grads"], np.memmap) and data["grads"].dtype == np.float16
    np.testing.assert_array_equal(data["grads"], shard_arrays(0, 7)["grads"].astype(np.float16))
    reopened = GradientStore(tmp_path).read()
    assert isinstance(reopened["pair_index"], np.memmap)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        GradientStore.open_or_create(tmp_path, dict(FIELDS, dtype="int8"))
    with pytest.raises(ValueError, match="checkpoint_hash"):
        GradientStore.open_or_create(tmp_path, {k: v for k, v in FIELDS.items() if k != "checkpoint_hash"})
    store = GradientStore.open_or_create(tmp_path, FIELDS)
    with pytest.raises(ValueError, match="pair_index"):
        store.write_shard(0, {"grads": np.zeros((2, 3)), "base_logits": np.zeros(2)})
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        store.write_shard(0, dict(shard_arrays(0, 2), grads=np.zeros((2, 4))))
    with pytest.raises(ValueError, match="rows"):
        store.write_shard(0, dict(shard_arrays(0, 2), task=np.zeros(3)))
    with pytest.raises(ValueError, match="no complete shards"):
        store.read()
