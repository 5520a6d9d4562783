"""The embedding cache: encode each slice once, then every click costs only the decoder.

Key: (image content + window, axis, slice index, encoder weights + preprocessing) -- see
`EmbeddingKey`. Two tiers: a bounded in-memory LRU (fp16 tensors) and an optional folder of fp16
``.npy`` files written atomically, so concurrent threads and processes never read a partial file.
Within a process a per-slice lock keeps two threads from encoding the same slice at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from cachetools import LRUCache

from samri.errors import SamriInputError
from samri.geometry import check_axis, take_slice
from samri.intensity import slice_to_model_input
from samri.io import atomic_write

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingKey:
    """Identity of one slice embedding."""

    content_key: str  # samri.volume.PreparedVolume.content_key
    axis: int
    index: int
    encoder_key: str  # samri.model.builders.SamModel.cache_key()

    def relative_path(self) -> Path:
        encoder = hashlib.blake2b(self.encoder_key.encode(), digest_size=8).hexdigest()
        return Path(encoder) / self.content_key / f"axis{self.axis}" / f"{self.index:05d}.npy"


class EmbeddingCache:
    """Two-tier cache of ``(C, h, w)`` slice embeddings.

    Args:
        cache_dir: folder for the disk tier; None keeps embeddings in memory only.
        max_memory_bytes: bound of the in-memory LRU (`cachetools.LRUCache` sized in fp16 bytes;
            2 MiB per 256x64x64 embedding). An embedding larger than the bound is not kept in
            memory (only on disk, when there is a disk tier).
    """

    def __init__(self, *, cache_dir: str | os.PathLike | None = None, max_memory_bytes: int = 1 << 30) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_memory_bytes = int(max_memory_bytes)
        self._memory: LRUCache[EmbeddingKey, torch.Tensor] = LRUCache(maxsize=max(1, self.max_memory_bytes),
                                                                      getsizeof=_tensor_bytes)
        self._lock = threading.Lock()
        self._slice_locks: dict[EmbeddingKey, threading.Lock] = {}
        self.stats = {"memory_hits": 0, "disk_hits": 0, "misses": 0, "encoded": 0}

    # --- tiers ----------------------------------------------------------------------------------
    def get(self, key: EmbeddingKey) -> torch.Tensor | None:
        """fp32 ``(C, h, w)`` embedding or None."""
        with self._lock:
            hit = self._memory.get(key)  # a hit becomes the most recently used
            if hit is not None:
                self.stats["memory_hits"] += 1
                return hit.float()
        loaded = self._read_disk(key)
        if loaded is not None:
            self.stats["disk_hits"] += 1
            self._remember(key, loaded)
            return loaded.float()
        self.stats["misses"] += 1
        return None

    def put(self, key: EmbeddingKey, embedding: torch.Tensor) -> None:
        """Store ``(C, h, w)``; kept as fp16 in memory and on disk."""
        half = embedding.detach().to("cpu", torch.float16).contiguous()
        self._remember(key, half)
        self._write_disk(key, half)

    def __contains__(self, key: EmbeddingKey) -> bool:
        with self._lock:
            if key in self._memory:
                return True
        return self.cache_dir is not None and (self.cache_dir / key.relative_path()).is_file()

    def _remember(self, key: EmbeddingKey, half: torch.Tensor) -> None:
        with self._lock:
            self._memory.pop(key, None)
            if _tensor_bytes(half) <= self._memory.maxsize:
                self._memory[key] = half  # evicts least recently used entries down to the bound

    def _read_disk(self, key: EmbeddingKey) -> torch.Tensor | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / key.relative_path()
        if not path.is_file():
            return None
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("dropping unreadable cache file %s (%s)", path, exc)
            path.unlink(missing_ok=True)
            return None

    def _write_disk(self, key: EmbeddingKey, half: torch.Tensor) -> None:
        if self.cache_dir is None:
            return
        path = self.cache_dir / key.relative_path()
        # a cache: atomic (readers never see half a file) but not fsynced (a lost file is recomputed)
        atomic_write(path, lambda f: np.save(f, half.numpy(), allow_pickle=False), durable=False)

    def slice_lock(self, key: EmbeddingKey) -> threading.Lock:
        """The lock held while ``key`` is being encoded (kept for the cache's lifetime: tiny)."""
        with self._lock:
            return self._slice_locks.setdefault(key, threading.Lock())


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _chunks(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def slice_keys(model, volume, axis: int, indices: Sequence[int]) -> list[EmbeddingKey]:
    return [EmbeddingKey(volume.content_key, axis, int(i), model.cache_key()) for i in indices]


@torch.inference_mode()
def encode_slices(model, volume, axis: int, indices: Sequence[int]) -> torch.Tensor:
    """Run the encoder on slices of a `samri.volume.PreparedVolume`: ``(N, C, h, w)`` fp32."""
    batch = torch.stack([slice_to_model_input(take_slice(volume.windowed, axis, i), model.preprocessing)
                         for i in indices])
    return model.image_encoder(batch.to(model.device)).float().cpu()


def get_embeddings(model, volume, cache: EmbeddingCache, axis: int, indices: Sequence[int], *,
                   batch_size: int = 4, progress: bool = False) -> dict[int, torch.Tensor]:
    """Embeddings for ``indices`` of ``volume`` along ``axis``, encoding only what is missing.

    Returns:
        ``{slice index: (C, h, w) fp32 tensor}``.
    """
    axis = check_axis(axis)
    n = volume.shape[axis]
    for i in indices:
        if not 0 <= int(i) < n:
            raise SamriInputError("slice", i, f"out of range for axis {axis} with {n} slices (0..{n - 1})")
    keys = dict(zip((int(i) for i in indices), slice_keys(model, volume, axis, indices)))
    out: dict[int, torch.Tensor] = {}
    missing = []
    for index, key in keys.items():
        hit = cache.get(key)
        if hit is None:
            missing.append(index)
        else:
            out[index] = hit
    bar = None
    if progress and missing:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(missing), desc=f"encoding axis {axis}", unit="slice")
    waiting = []
    for chunk in _chunks(missing, max(1, batch_size)):
        claimed = [i for i in chunk if cache.slice_lock(keys[i]).acquire(blocking=False)]
        waiting += [i for i in chunk if i not in claimed]
        try:
            todo = []
            for i in claimed:
                hit = cache.get(keys[i])  # another thread may have finished it meanwhile
                if hit is None:
                    todo.append(i)
                else:
                    out[i] = hit
            if todo:
                for i, emb in zip(todo, encode_slices(model, volume, axis, todo)):
                    cache.put(keys[i], emb)
                    out[i] = emb.half().float()  # what every later (cached) read returns
                cache.stats["encoded"] += len(todo)
        finally:
            for i in claimed:
                cache.slice_lock(keys[i]).release()
        if bar is not None:
            bar.update(len(chunk))
    for i in waiting:  # being encoded by another thread: wait for it, else encode here
        with cache.slice_lock(keys[i]):
            hit = cache.get(keys[i])
            if hit is None:
                hit = encode_slices(model, volume, axis, [i])[0]
                cache.put(keys[i], hit)
                hit = hit.half().float()
                cache.stats["encoded"] += 1
            out[i] = hit
    if bar is not None:
        bar.close()
    return out
