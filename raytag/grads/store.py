"""On-disk store of projected per-pair gradients, sharded and resumable.

Layout under ``root``::

    manifest.json                  identity (config/checkpoint hash, projector spec, dtype, d)
                                   + complete shards (refreshed by ``sync_manifest``)
    shards/shard-000012/grads.npy  one .npy per array (written atomically)
    shards/shard-000012.done.json  completion marker, written after all of the shard's arrays

The per-shard markers are the source of truth for completeness: many workers may write
shards at once, each marker appears atomically, and a shard killed half-way has no marker, so
it is ignored and rewritten on resume. ``read()`` returns every array in pair order
(``pair_index``), memory-mapped when the store is one shard or consolidated.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from raytag.io import atomic_save_npy, atomic_write_json, read_json

IDENTITY_KEYS = ("config_hash", "checkpoint_hash", "projector", "dtype", "d")
REQUIRED_ARRAYS = ("grads", "base_logits", "pair_index")
DTYPES = ("float32", "float16")
FORMAT_VERSION = 1


class StoreMismatchError(ValueError):
    """An existing store was written under a different configuration; ``differences`` says how."""

    def __init__(self, message: str, differences: str):
        super().__init__(message)
        self.differences = differences


class GradientStore:
    """Sharded ``.npy`` gradient store; open it with ``GradientStore.open_or_create``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.manifest_path.exists():
            raise ValueError(f"no gradient store at {self.root} (missing {self.manifest_path.name}); "
                             "create one with GradientStore.open_or_create")
        self.manifest = read_json(self.manifest_path)

    # ---- paths
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def shard_root(self) -> Path:
        return self.root / "shards"

    def _shard_dir(self, shard_id: int) -> Path:
        return self.shard_root / f"shard-{int(shard_id):06d}"

    def _marker(self, shard_id: int) -> Path:
        return self.shard_root / f"shard-{int(shard_id):06d}.done.json"

    def shard_paths(self, shard_id: int) -> tuple[Path, Path]:
        """A shard's folder of arrays and its completion marker (copy them in this order)."""
        return self._shard_dir(shard_id), self._marker(shard_id)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def d(self) -> int:
        return int(self.manifest["d"])

    # ---- opening
    @classmethod
    def open_or_create(cls, root: str | os.PathLike, manifest_fields: dict,
                       force: bool = False) -> "GradientStore":
        """Open the store at ``root`` for resuming, or create it.

        ``manifest_fields`` must hold ``config_hash``, ``checkpoint_hash``, ``projector`` (its
        spec), ``dtype`` ("float32" | "float16") and ``d``; other JSON-able fields are kept.
        An existing store whose identity differs raises ``StoreMismatchError`` naming the
        differing keys, unless ``force`` (then its shards are deleted and it starts over).
        """
        _validate_fields(manifest_fields)
        root = Path(root)
        manifest_path = root / "manifest.json"
        if manifest_path.exists():
            existing = read_json(manifest_path)
            wanted = json.loads(json.dumps(manifest_fields))  # same normalization as on disk
            differing = [k for k in IDENTITY_KEYS if existing.get(k) != wanted[k]]
            if not differing:
                return cls(root)
            if not force:
                details = "; ".join(_difference(k, existing.get(k), wanted[k]) for k in differing)
                differences = f"{root} was written with a different {', '.join(differing)} ({details})"
                raise StoreMismatchError(
                    f"gradient store {differences}. Its shards cannot be mixed with new ones: use a new run "
                    "directory, or rerun with --force to delete this store and recompute it.", differences)
            shutil.rmtree(root / "shards", ignore_errors=True)
            for consolidated in root.glob("consolidated-*.npy"):
                consolidated.unlink()
        manifest = {"format_version": FORMAT_VERSION, **manifest_fields,
                    "complete_shards": [], "consolidated": None}
        atomic_write_json(manifest_path, manifest)
        return cls(root)

    # ---- writing
    def write_shard(self, shard_id: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one shard's arrays, then its completion marker (overwrites a rerun shard).

        ``arrays`` needs ``grads [p, d]``, ``base_logits [p]`` and ``pair_index [p]`` (global
        row of each pair, which fixes the pair order of ``read()``); any other per-pair arrays
        (node, task, split, label, weight) of length p are stored too.
        """
        missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
        if missing:
            raise ValueError(f"shard {shard_id} lacks arrays {missing}; required: {list(REQUIRED_ARRAYS)}")
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        rows = len(arrays["pair_index"])
        bad = {k: v.shape for k, v in arrays.items() if v.ndim == 0 or v.shape[0] != rows}
        if bad:
            raise ValueError(f"shard {shard_id}: every array needs {rows} rows (len of pair_index); got {bad}")
        if arrays["grads"].ndim != 2 or arrays["grads"].shape[1] != self.d:
            raise ValueError(f"shard {shard_id}: grads must be [{rows}, {self.d}], "
                             f"got {arrays['grads'].shape}")
        arrays["grads"] = arrays["grads"].astype(self.dtype, copy=False)
        arrays["base_logits"] = arrays["base_logits"].astype(np.float32, copy=False)
        arrays["pair_index"] = arrays["pair_index"].astype(np.int64, copy=False)
        self._marker(shard_id).unlink(missing_ok=True)
        directory = self._shard_dir(shard_id)
        for name, value in arrays.items():
            atomic_save_npy(directory / f"{name}.npy", value)
        atomic_write_json(self._marker(shard_id), {
            "rows": rows, "arrays": {k: [str(v.dtype), list(v.shape)] for k, v in arrays.items()}})

    # ---- completeness
    def complete_shards(self) -> list[int]:
        """Shard ids whose completion marker exists (sorted)."""
        if not self.shard_root.exists():
            return []
        return sorted(int(p.name[len("shard-"):-len(".done.json")])
                      for p in self.shard_root.glob("shard-*.done.json"))

    def is_complete(self, shard_id: int) -> bool:
        return self._marker(shard_id).exists()

    def sync_manifest(self, **extra) -> dict:
        """Rewrite the manifest's shard list from the markers (plus any ``extra`` fields).

        Call from the single driver when workers finish: markers are authoritative, the
        manifest list is a summary for readers.
        """
        self.manifest = {**read_json(self.manifest_path), **extra,
                         "complete_shards": self.complete_shards()}
        atomic_write_json(self.manifest_path, self.manifest)
        return self.manifest

    # ---- reading
    def read_shard(self, shard_id: int, mmap: bool = True) -> dict[str, np.ndarray]:
        if not self.is_complete(shard_id):
            raise ValueError(f"shard {shard_id} of {self.root} is not complete")
        names = read_json(self._marker(shard_id))["arrays"]
        return {name: np.load(self._shard_dir(shard_id) / f"{name}.npy",
                              mmap_mode="r" if mmap else None) for name in names}

    def read(self, shards: list[int] | None = None) -> dict[str, np.ndarray]:
        """All complete shards' arrays, rows in ``pair_index`` order.

        Memory-mapped when the store is consolidated for exactly these shards or has one
        shard; otherwise copied once into arrays (``consolidate()`` writes them to disk).
        """
        shards = self.complete_shards() if shards is None else sorted(shards)
        if not shards:
            raise ValueError(f"gradient store {self.root} has no complete shards")
        consolidated = self.manifest.get("consolidated")
        if consolidated and consolidated["shards"] == shards:
            return {name: np.load(self.root / f"consolidated-{name}.npy", mmap_mode="r")
                    for name in consolidated["arrays"]}
        parts = [self.read_shard(s) for s in shards]
        names = list(parts[0])
        if any(sorted(p) != sorted(names) for p in parts):
            raise ValueError(f"shards of {self.root} hold different array names; rewrite the store")
        index = np.concatenate([p["pair_index"] for p in parts])
        order = np.argsort(index, kind="stable")
        if len(parts) == 1 and np.all(order[1:] > order[:-1]):
            return parts[0]
        if len(np.unique(index)) != len(index):
            raise ValueError(f"shards of {self.root} contain duplicate pair_index values")
        return {name: np.concatenate([p[name] for p in parts])[order] for name in names}

    def consolidate(self) -> dict[str, np.ndarray]:
        """Write all complete shards as one memory-mappable ``.npy`` per array (pair order)."""
        shards = self.complete_shards()
        arrays = self.read(shards)
        for name, value in arrays.items():
            atomic_save_npy(self.root / f"consolidated-{name}.npy", value)
        self.sync_manifest(consolidated={"shards": shards, "arrays": sorted(arrays)})
        return self.read(shards)


def _validate_fields(fields: dict) -> None:
    missing = [k for k in IDENTITY_KEYS if k not in fields]
    if missing:
        raise ValueError(f"gradient store manifest needs fields {missing} (required: {list(IDENTITY_KEYS)})")
    if fields["dtype"] not in DTYPES:
        raise ValueError(f"gradient store dtype={fields['dtype']!r} is not supported; use one of {DTYPES}")
    if not isinstance(fields["projector"], dict) or fields["projector"].get("d") != fields["d"]:
        raise ValueError(f"manifest projector must be the projector's spec dict with d={fields['d']}")


def _difference(key: str, stored, now) -> str:
    if isinstance(stored, dict) and isinstance(now, dict):
        keys = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
        return f"{key}: " + ", ".join(f"{k} stored {_short(stored.get(k))} vs now {_short(now.get(k))}"
                                      for k in keys)
    return f"{key}: stored {_short(stored)} vs now {_short(now)}"


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "…"
