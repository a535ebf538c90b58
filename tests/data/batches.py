"""Shared check for the native-precision contract: batches equal the former float tensors."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mmvae_bench.data.spec import Split, iter_batches


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Both float32 with the same shape and the same bit pattern everywhere."""
    if a.dtype != torch.float32 or b.dtype != torch.float32 or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def assert_batches_bit_identical(
    split: Split, old: Mapping[str, Tensor], *, batch_size: int = 7, seed: int = 0
) -> None:
    """``split``'s batches are bit-identical to batching ``old`` (the float32 tensors the
    loader used to hold): the whole split, and shuffled batches drawn with the same seed."""
    assert set(split.x) == set(old)
    whole = split.batch()
    for m, t in old.items():
        assert same_bits(whole[m], t), f"modality {m}: whole split differs from the float path"
    g_new, g_old = (torch.Generator().manual_seed(seed) for _ in range(2))
    new_batches = iter_batches(split, batch_size, shuffle=True, generator=g_new)
    old_batches = iter_batches(dict(old), batch_size, shuffle=True, generator=g_old)
    n = 0
    for (b_new, _), (b_old, _) in zip(new_batches, old_batches, strict=True):
        assert all(same_bits(b_new[m], b_old[m]) for m in old), f"batch {n} differs"
        n += 1
    assert n == -(-len(split) // batch_size)
