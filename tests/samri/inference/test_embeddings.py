"""samri.inference.embeddings: the two-tier embedding cache and get_embeddings (encode each slice once)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from samri.errors import SamriInputError
from samri.inference import embeddings as emb_mod
from samri.inference.embeddings import EmbeddingCache, EmbeddingKey, encode_slices, get_embeddings, slice_keys
from samri.intensity import WindowSettings

EMB_BYTES = 32 * 8 * 8 * 2  # one tiny-model embedding in fp16


@pytest.fixture()
def encode_log(monkeypatch) -> list[tuple[int, int]]:
    """Every ``(axis, slice)`` the encoder runs on, in order (wraps `encode_slices`)."""
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()
    original = emb_mod.encode_slices

    def counting(model, volume, axis, indices):
        with lock:
            calls.extend((int(axis), int(i)) for i in indices)
        return original(model, volume, axis, indices)

    monkeypatch.setattr(emb_mod, "encode_slices", counting)
    return calls


def files(folder: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in folder.rglob(pattern) if p.is_file())


def key(index: int = 0, axis: int = 2, content: str = "c", encoder: str = "e") -> EmbeddingKey:
    return EmbeddingKey(content, axis, index, encoder)


# --- get_embeddings -----------------------------------------------------------------------------
def test_miss_then_hit_encodes_once(tiny_model, prepared_volume, encode_log):
    cache = EmbeddingCache()
    first = get_embeddings(tiny_model, prepared_volume, cache, 2, [3, 4, 5], batch_size=2)
    assert sorted(first) == [3, 4, 5]
    assert all(tuple(t.shape) == tiny_model.embedding_shape and t.dtype == torch.float32 for t in first.values())
    assert sorted(encode_log) == [(2, 3), (2, 4), (2, 5)]
    assert cache.stats["encoded"] == 3 and cache.stats["memory_hits"] == 0
    second = get_embeddings(tiny_model, prepared_volume, cache, 2, [5, 4, 3, 6])
    assert sorted(encode_log) == [(2, 3), (2, 4), (2, 5), (2, 6)]
    assert cache.stats["encoded"] == 4 and cache.stats["memory_hits"] == 3
    for i in (3, 4, 5):
        torch.testing.assert_close(second[i], first[i], atol=2e-2, rtol=1e-2)


def test_cached_embedding_equals_the_first_result(tiny_model, prepared_volume):
    """The first (uncached) click and every later click must see the same embedding values."""
    cache = EmbeddingCache()
    first = get_embeddings(tiny_model, prepared_volume, cache, 2, [7])[7]
    again = get_embeddings(tiny_model, prepared_volume, cache, 2, [7])[7]
    assert torch.equal(first, again)


def test_embedding_is_the_encoder_output(tiny_model, prepared_volume):
    cache = EmbeddingCache()
    got = get_embeddings(tiny_model, prepared_volume, cache, 1, [10])[10]
    direct = encode_slices(tiny_model, prepared_volume, 1, [10])[0]
    torch.testing.assert_close(got, direct, atol=1e-2, rtol=1e-2)
    other = encode_slices(tiny_model, prepared_volume, 1, [30])[0]
    assert not torch.allclose(direct, other)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_every_axis(tiny_model, prepared_volume, axis):
    n = prepared_volume.shape[axis]
    out = get_embeddings(tiny_model, prepared_volume, EmbeddingCache(), axis, [0, n - 1])
    assert sorted(out) == [0, n - 1]


@pytest.mark.parametrize("index", [-1, 30, 1000])
def test_slice_out_of_range(tiny_model, prepared_volume, index):
    with pytest.raises(SamriInputError, match=r"^slice=") as err:
        get_embeddings(tiny_model, prepared_volume, EmbeddingCache(), 2, [0, index])
    assert "0..29" in str(err.value)


def test_bad_axis(tiny_model, prepared_volume):
    with pytest.raises(SamriInputError, match=r"^axis="):
        get_embeddings(tiny_model, prepared_volume, EmbeddingCache(), 3, [0])


def test_progress_bar_precompute(tiny_model, prepared_volume, encode_log, capsys):
    cache = EmbeddingCache()
    out = get_embeddings(tiny_model, prepared_volume, cache, 2, list(range(30)), batch_size=8, progress=True)
    assert len(out) == 30 and len(encode_log) == 30
    assert "encoding axis 2" in capsys.readouterr().err


# --- disk tier ----------------------------------------------------------------------------------
def test_disk_tier_fp16_files_and_second_cache_reads_them(tiny_model, prepared_volume, tmp_path, encode_log):
    cache = EmbeddingCache(cache_dir=tmp_path)
    first = get_embeddings(tiny_model, prepared_volume, cache, 2, [1, 2, 3])
    npy = files(tmp_path, "*.npy")
    assert len(npy) == 3
    for i, k in enumerate(slice_keys(tiny_model, prepared_volume, 2, [1, 2, 3])):
        path = tmp_path / k.relative_path()
        assert path in npy
        arr = np.load(path, allow_pickle=False)
        assert arr.dtype == np.float16 and arr.shape == tiny_model.embedding_shape
        np.testing.assert_allclose(arr.astype(np.float32), first[i + 1].numpy(), atol=2e-2, rtol=1e-2)
    assert files(tmp_path, "*.tmp") == []

    encode_log.clear()
    other = EmbeddingCache(cache_dir=tmp_path)  # e.g. another process
    second = get_embeddings(tiny_model, prepared_volume, other, 2, [1, 2, 3])
    assert encode_log == []
    assert other.stats["disk_hits"] == 3 and other.stats["encoded"] == 0
    for i in (1, 2, 3):
        np.testing.assert_array_equal(second[i].numpy(), np.load(tmp_path / slice_keys(
            tiny_model, prepared_volume, 2, [i])[0].relative_path()).astype(np.float32))
    # now in memory: the next read does not touch the disk
    get_embeddings(tiny_model, prepared_volume, other, 2, [1])
    assert other.stats["memory_hits"] == 1 and other.stats["disk_hits"] == 3


def test_put_get_contains(tmp_path):
    cache = EmbeddingCache(cache_dir=tmp_path)
    k = key(5)
    assert cache.get(k) is None and k not in cache
    assert cache.stats["misses"] == 1
    value = torch.randn(4, 3, 3)
    cache.put(k, value)
    assert k in cache
    got = cache.get(k)
    assert got.dtype == torch.float32 and got.shape == (4, 3, 3)
    torch.testing.assert_close(got, value.half().float())
    assert EmbeddingCache(cache_dir=tmp_path).__contains__(k)  # on disk
    assert k not in EmbeddingCache()  # memory-only cache: nothing


def test_returned_tensor_does_not_alias_the_cache():
    cache = EmbeddingCache()
    cache.put(key(), torch.ones(2, 2, 2))
    got = cache.get(key())
    got += 5
    assert torch.equal(cache.get(key()), torch.ones(2, 2, 2))


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "pickle"])
def test_corrupt_disk_file_is_recovered(tiny_model, prepared_volume, tmp_path, encode_log, damage):
    get_embeddings(tiny_model, prepared_volume, EmbeddingCache(cache_dir=tmp_path), 2, [4])
    path = tmp_path / slice_keys(tiny_model, prepared_volume, 2, [4])[0].relative_path()
    good = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": good[: len(good) // 2], "garbage": b"\x00garbage" * 50,
                      "pickle": b"\x80\x04K\x01."}[damage])
    encode_log.clear()
    cache = EmbeddingCache(cache_dir=tmp_path)
    out = get_embeddings(tiny_model, prepared_volume, cache, 2, [4])
    assert tuple(out[4].shape) == tiny_model.embedding_shape
    assert encode_log == [(2, 4)]  # re-encoded
    assert path.read_bytes() == good  # and rewritten (same weights, same bytes)
    assert files(tmp_path, "*.tmp") == []


# --- memory tier --------------------------------------------------------------------------------
def test_lru_bound_is_respected():
    cache = EmbeddingCache(max_memory_bytes=3 * EMB_BYTES)
    keys = [key(i) for i in range(5)]
    for k in keys[:3]:
        cache.put(k, torch.randn(32, 8, 8))
    assert cache.get(keys[0]) is not None  # refresh 0: 1 is now the oldest
    for k in keys[3:]:
        cache.put(k, torch.randn(32, 8, 8))
    assert cache._memory.currsize <= cache.max_memory_bytes
    assert len(cache._memory) == 3
    assert [k in cache for k in keys] == [True, False, False, True, True]
    assert cache.get(keys[1]) is None


def test_an_embedding_over_the_memory_bound_is_kept_on_disk_only(tmp_path):
    cache = EmbeddingCache(cache_dir=tmp_path, max_memory_bytes=10)
    cache.put(key(0), torch.randn(32, 8, 8))
    assert len(cache._memory) == 0 and key(0) in cache
    assert cache.get(key(0)) is not None and cache.stats["disk_hits"] == 1
    memory_only = EmbeddingCache(max_memory_bytes=10)
    memory_only.put(key(1), torch.randn(32, 8, 8))
    assert key(1) not in memory_only


def test_lru_replacing_a_key_does_not_double_count():
    cache = EmbeddingCache(max_memory_bytes=2 * EMB_BYTES)
    for _ in range(5):
        cache.put(key(0), torch.randn(32, 8, 8))
    cache.put(key(1), torch.randn(32, 8, 8))
    assert key(0) in cache and key(1) in cache
    assert cache._memory.currsize == 2 * EMB_BYTES


def test_evicted_entry_comes_back_from_disk(tmp_path):
    cache = EmbeddingCache(cache_dir=tmp_path, max_memory_bytes=EMB_BYTES)
    a, b = torch.randn(32, 8, 8), torch.randn(32, 8, 8)
    cache.put(key(0), a)
    cache.put(key(1), b)
    got = cache.get(key(0))
    assert cache.stats["disk_hits"] == 1
    torch.testing.assert_close(got, a.half().float())


# --- concurrency --------------------------------------------------------------------------------
@pytest.mark.parametrize("second_order", ["same", "reversed"])
def test_two_threads_encode_each_slice_once(tiny_model, prepared_volume, tmp_path, monkeypatch, second_order):
    calls: list[int] = []
    workers: set[str] = set()
    lock = threading.Lock()
    original = emb_mod.encode_slices

    def slow(model, volume, axis, indices):
        with lock:
            calls.extend(int(i) for i in indices)
            workers.add(threading.current_thread().name)
        time.sleep(0.05)
        return original(model, volume, axis, indices)

    monkeypatch.setattr(emb_mod, "encode_slices", slow)
    cache = EmbeddingCache(cache_dir=tmp_path)
    indices = list(range(12))
    barrier = threading.Barrier(2)
    results, errors = [None, None], []

    def worker(n: int, order: list[int]) -> None:
        try:
            barrier.wait()
            results[n] = get_embeddings(tiny_model, prepared_volume, cache, 2, order, batch_size=3)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(0, indices), name="first"),
               threading.Thread(target=worker, args=(1, indices if second_order == "same" else indices[::-1]),
                                name="second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and all(r is not None for r in results)
    assert sorted(calls) == indices, "every slice encoded exactly once in total"
    assert workers == {"first", "second"}, "both threads took a share of the work (they really overlapped)"
    for i in indices:
        torch.testing.assert_close(results[0][i], results[1][i], atol=2e-2, rtol=1e-2)
    assert len(files(tmp_path, "*.npy")) == 12 and files(tmp_path, "*.tmp") == []


def test_two_caches_on_one_folder_in_threads(tiny_model, prepared_volume, tmp_path):
    """Two caches (as two processes would) writing the same files never leave a partial file."""
    caches = [EmbeddingCache(cache_dir=tmp_path), EmbeddingCache(cache_dir=tmp_path)]
    out = [None, None]

    def worker(n):
        out[n] = get_embeddings(tiny_model, prepared_volume, caches[n], 2, list(range(6)), batch_size=2)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert out[0] is not None and out[1] is not None
    assert files(tmp_path, "*.tmp") == []
    third = EmbeddingCache(cache_dir=tmp_path)
    for i in range(6):
        k = slice_keys(tiny_model, prepared_volume, 2, [i])[0]
        assert third.get(k) is not None
    assert third.stats["disk_hits"] == 6


# --- keys ---------------------------------------------------------------------------------------
def test_key_changes_with_content_axis_slice_and_preprocessing(tiny_model, prepared_volume, make_volume,
                                                              volume_array):
    base = slice_keys(tiny_model, prepared_volume, 2, [3])[0]
    assert base == slice_keys(tiny_model, make_volume(), 2, [3])[0]  # same content -> same key
    changed = volume_array.copy()
    changed[0, 0, 0] += 1.0
    variants = [
        slice_keys(tiny_model, make_volume(changed), 2, [3])[0],
        slice_keys(tiny_model, make_volume(window=WindowSettings(upper_percentile=99.0)), 2, [3])[0],
        slice_keys(tiny_model, prepared_volume, 1, [3])[0],
        slice_keys(tiny_model, prepared_volume, 2, [4])[0],
    ]
    paths = {base.relative_path()} | {v.relative_path() for v in variants}
    assert len({base, *variants}) == 5 and len(paths) == 5


def test_model_preprocessing_change_means_new_embeddings(fresh_tiny_model, prepared_volume, tmp_path, encode_log):
    cache = EmbeddingCache(cache_dir=tmp_path)
    get_embeddings(fresh_tiny_model, prepared_volume, cache, 2, [2])
    key_before = fresh_tiny_model.cache_key()
    fresh_tiny_model.preprocessing = replace(fresh_tiny_model.preprocessing, slice_minmax=True)
    assert fresh_tiny_model.cache_key() != key_before
    get_embeddings(fresh_tiny_model, prepared_volume, cache, 2, [2])
    assert encode_log == [(2, 2), (2, 2)]
    assert len(files(tmp_path, "*.npy")) == 2


def test_other_encoder_weights_mean_new_embeddings(tiny_model, fresh_tiny_model, prepared_volume):
    with torch.no_grad():
        next(fresh_tiny_model.image_encoder.parameters()).add_(1.0)
    from samri.model.builders import state_fingerprint

    fresh_tiny_model.encoder_id = f"tiny-{state_fingerprint(fresh_tiny_model.image_encoder)}"
    assert fresh_tiny_model.cache_key() != tiny_model.cache_key()
    assert slice_keys(tiny_model, prepared_volume, 2, [0]) != slice_keys(fresh_tiny_model, prepared_volume, 2, [0])


def test_content_key_includes_window(make_volume):
    a = make_volume()
    b = make_volume(window=WindowSettings(lower_percentile=1.0))
    assert a.content_key != b.content_key
    assert a.content_key.split("-")[0] == b.content_key.split("-")[0]  # same raw content hash
    assert make_volume(a.windowed.copy()).content_key != a.content_key  # other content
    assert make_volume(a.windowed.astype(np.float64)).content_key != make_volume(a.windowed).content_key  # dtype
