"""The paired sequence dataset (reference `lm_seqs_dataset.py`), the length-grouped batch sampler and the
collator that does all per-batch randomness (MLM corruption, mapping entry, interchange positions).

Randomness: the batch sampler yields `(batch_number, epoch, index)` keys; the collator seeds its generator
with `(seed, batch_number)` and the dataset picks the epoch's pairing from `(seed, epoch)`, so a batch's
pairs, masking and positions do not depend on worker count or on resuming.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from lmlab.errors import LmlabError
from torch.utils.data import Dataset, Sampler


def split_long(seq: np.ndarray, max_len: int, cls_id: int, sep_id: int) -> list[np.ndarray]:
    """Cut a sequence longer than `max_len` into pieces of max_len - 2 ids, adding [CLS]/[SEP] where missing
    (600 ids -> 511 + 91 for max_len 512)."""
    if len(seq) <= max_len:
        return [seq]
    out = []
    for start in range(0, len(seq), max_len - 2):
        piece = seq[start : start + max_len - 2]
        if piece[0] != cls_id:
            piece = np.insert(piece, 0, cls_id)
        if piece[-1] != sep_id:
            piece = np.append(piece, sep_id)
        out.append(piece)
    return out


class PairedSeqDataset(Dataset):
    """Cleaned sequences and a seeded pairing permutation: item i = (seq_i, seq_pi(i))."""

    def __init__(
        self,
        sequences: list[np.ndarray],
        cls_id: int,
        sep_id: int,
        unk_id: int | None,
        max_model_input_size: int = 512,
        min_length: int = 11,
        seed: int = 56,
        repair_each_epoch: bool = False,
    ):
        seqs: list[np.ndarray] = []
        for s in sequences:
            seqs += split_long(np.asarray(s), max_model_input_size, cls_id, sep_id)
        n_split = len(seqs)
        seqs = [s for s in seqs if len(s) > min_length]
        self.n_short = n_split - len(seqs)
        if unk_id is not None:
            kept = [s for s in seqs if (s == unk_id).mean() < 0.5]
            self.n_unk = len(seqs) - len(kept)
            seqs = kept
        else:
            self.n_unk = 0
        if not seqs:
            raise LmlabError(
                f"no sequence left after dropping {self.n_short} of length <= {min_length} and {self.n_unk} mostly"
                " [UNK]; give a larger corpus"
            )
        self.seqs = [s.astype(np.int64) for s in seqs]
        self.lengths = np.array([len(s) for s in self.seqs], dtype=np.int64)
        self.seed, self.repair_each_epoch = seed, repair_each_epoch
        self.pairing = np.random.default_rng(seed).permutation(len(self.seqs))
        self._redrawn: tuple[int, np.ndarray] | None = None  # the last redrawn (epoch, pairing)

    def __len__(self) -> int:
        return len(self.seqs)

    def pairing_for(self, epoch: int) -> np.ndarray:
        """The pairing permutation of `epoch`: `self.pairing` always without `repair_each_epoch`, else
        drawn from `(seed, epoch)` for every epoch after the first (a pure function of them, so a resumed run
        redraws the same one)."""
        if not self.repair_each_epoch or epoch == 0:
            return self.pairing
        if self._redrawn is None or self._redrawn[0] != epoch:
            self._redrawn = (epoch, np.random.default_rng((self.seed, epoch)).permutation(len(self.seqs)))
        return self._redrawn[1]

    def __getitem__(self, key):
        batch_no, epoch, i = key if isinstance(key, tuple) else (0, 0, key)
        j = int(self.pairing_for(epoch)[i])
        return batch_no, self.seqs[i], self.seqs[j]


def batches_per_epoch(n_sequences: int, batch_size: int) -> int:
    """Batches in one pass over the data set (the last one may be partial)."""
    return -(-n_sequences // batch_size)


class GroupedBatchSampler(Sampler[list]):
    """An endless stream of batches of `(batch_number, epoch, index)`: epoch e shuffles with seed + e and
    groups indices into length buckets (boundaries 3, 7, 11, ... on the base length) as the reference's grouped
    sampler does (each full bucket buffer emits a batch; leftovers are concatenated in bucket order at the epoch
    end). Each rank takes every world_size-th batch; `start` skips the batches already consumed (exact resume)."""

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int = 0,
        group_by_size: bool = True,
        max_len: int = 512,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.group = batch_size, seed, group_by_size
        self.bins = list(range(3, max_len, 4))
        self.start, self.rank, self.world_size = start, rank, world_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng(self.seed + epoch).permutation(len(self.lengths)).tolist()
        bs = self.batch_size
        if not self.group:
            return [order[i : i + bs] for i in range(0, len(order), bs)]
        buffers: dict[int, list[int]] = {}
        batches: list[list[int]] = []
        for idx in order:
            g = bisect.bisect_right(self.bins, int(self.lengths[idx]))
            buf = buffers.setdefault(g, [])
            buf.append(idx)
            if len(buf) == bs:
                batches.append(buf[:])
                buf.clear()
        rest = [i for g in sorted(buffers) for i in buffers[g]]
        batches += [rest[i : i + bs] for i in range(0, len(rest), bs)]
        return batches

    def batches_per_epoch(self) -> int:
        return batches_per_epoch(len(self.lengths), self.batch_size)

    def __iter__(self) -> Iterator[list]:
        global_no = self.rank + self.start * self.world_size
        epoch, offset = divmod(global_no, self.batches_per_epoch())
        batches = self.epoch_batches(epoch)
        while True:
            yield [(global_no, epoch, i) for i in batches[offset]]
            global_no += self.world_size
            offset += self.world_size
            while offset >= len(batches):
                offset -= len(batches)
                epoch += 1
                batches = self.epoch_batches(epoch)


@dataclass
class CollatorOptions:
    mlm: bool = True
    mlm_mask_prop: float = 0.15
    word_mask: float = 0.8
    word_keep: float = 0.1
    word_rand: float = 0.1
    causal: bool = True
    entry_sizes: tuple = ((1, 1),)  # per mapping entry: (number of teacher names, number of student names)
    interchange_prop: float = 0.3
    interchange_max_token: int = -1
    interchange_consecutive_only: bool = False
    interchange_masked_token_only: bool = False
    seed: int = 56


class Collator:
    """Pads base rows to the batch max length T, pads or truncates partners to T, then corrupts (MLM) both,
    picks the mapping entry and samples the interchange positions."""

    def __init__(
        self,
        opts: CollatorOptions,
        pad_id: int,
        mask_id: int | None,
        vocab_size: int,
        weights: torch.Tensor | None,
    ):
        if opts.mlm and (mask_id is None or weights is None):
            raise LmlabError("--mlm needs a tokenizer with a mask token and --token_counts")
        self.opts, self.pad_id, self.mask_id, self.vocab_size, self.weights = (
            opts,
            pad_id,
            mask_id,
            vocab_size,
            weights,
        )

    def __call__(self, items) -> dict[str, torch.Tensor]:
        from diito.masking import mlm_mask
        from diito.positions import sample_positions

        o = self.opts
        batch_no = int(items[0][0])
        gen = torch.Generator().manual_seed(o.seed * 1_000_003 + batch_no)
        rng = random.Random(o.seed * 1_000_003 + batch_no)
        T = max(len(b) for _, b, _ in items)
        B = len(items)
        base = torch.full((B, T), self.pad_id, dtype=torch.long)
        src = torch.full((B, T), self.pad_id, dtype=torch.long)
        base_len = torch.zeros(B, dtype=torch.long)
        src_len = torch.zeros(B, dtype=torch.long)
        for r, (_, b, s) in enumerate(items):
            s = s[:T]
            base[r, : len(b)] = torch.from_numpy(b)
            src[r, : len(s)] = torch.from_numpy(s)
            base_len[r], src_len[r] = len(b), len(s)
        ar = torch.arange(T)[None]
        out = {
            "base_mask": (ar < base_len[:, None]).long(),
            "src_mask": (ar < src_len[:, None]).long(),
            "base_len": base_len,
            "src_len": src_len,
        }
        if o.mlm:
            kw = dict(
                mask_prop=o.mlm_mask_prop,
                word_mask=o.word_mask,
                word_keep=o.word_keep,
                word_rand=o.word_rand,
                generator=gen,
            )
            base, labels, selected = mlm_mask(
                base, base_len, self.weights, self.mask_id, self.vocab_size, **kw
            )
            src, _, _ = mlm_mask(src, src_len, self.weights, self.mask_id, self.vocab_size, **kw)
        else:
            labels = torch.where(out["base_mask"].bool(), base, torch.full_like(base, -100))
            selected = out["base_mask"].bool()
        out.update(base_ids=base, src_ids=src, labels=labels, selected=selected)
        if o.causal:
            P, Ps = sample_positions(
                base_len,
                src_len,
                T,
                prop=o.interchange_prop,
                max_token=o.interchange_max_token,
                consecutive_only=o.interchange_consecutive_only,
                masked_positions=selected if o.interchange_masked_token_only else None,
                generator=gen,
            )
            e = rng.randrange(len(o.entry_sizes))
            n_t, n_s = o.entry_sizes[e]
            # plain ints (not a tensor): stays on the host, so choosing the sites costs no device sync
            out.update(P=P, Ps=Ps, entry=(e, rng.randrange(n_t), rng.randrange(n_s)))
        return out
