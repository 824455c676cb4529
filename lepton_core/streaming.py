"""A training rank's stream over its part of a split: Parquet row groups, never a whole split.

The split's row groups, across its days' shard files, form one sequence of rows. For the
train split, each epoch shuffles the order of the row groups with (seed, epoch); rank ``r``
of ``size`` takes the ``r``-th of ``size`` equal contiguous ranges of that order, each
``ceil(rows / size)`` long (the last wraps round to the first rows, as ``DistributedSampler``
pads), so every rank runs the same number of steps; rows are shuffled again within a buffer
of a few row groups. For evaluation nothing is shuffled or padded: rank ``r`` scores rows
``[r·rows/size, (r+1)·rows/size)``, and the sums over ranks count every row once.

A rank holds at most ``buffer_groups`` row groups being trained on (plus one batch) and the
last ``buffer_groups`` row groups read, kept so that a part within one buffer is read from
storage once rather than every epoch; its memory does not depend on the size of the dataset.
Batches are made from Polars frames of whole row-group slices (no Python per row) with the
same encoders as ``data.load_tensors``.
"""

import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.utils.data import IterableDataset

from lepton_core.data import encode_inputs, encode_target, split_keys
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore

Piece = tuple[int, int, int]  # (row group, first row in it, rows)


class ShardStream(IterableDataset):
    """Batches (inputs..., target) of one rank's part of a split; ``set_epoch`` reshuffles."""

    def __init__(
        self,
        store: ArtifactStore,
        info: dict[str, Any],
        split: str,
        batch_size: int,
        rank: int,
        size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        buffer_groups: int = 4,
    ) -> None:
        self.store, self.batch_size, self.rank, self.size = store, batch_size, rank, size
        self.shuffle, self.seed, self.buffer_groups = shuffle, seed, buffer_groups
        self.spec = DatasetSpec.model_validate(info["spec"])
        self.preprocessing = info["preprocessing"]
        self.groups: list[tuple[str, int, int]] = []  # (file, index in it, rows)
        for key in split_keys(info, split):
            sizes = store.row_group_sizes(key)
            self.groups += [(key, i, rows) for i, rows in enumerate(sizes)]
        self.rows = sum(rows for *_, rows in self.groups)
        # The last row groups read stay in memory: a part that fits in the buffer is read
        # from storage once, not every epoch.
        self.read_group = functools.lru_cache(maxsize=buffer_groups)(store.read_row_group)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rank_range(self) -> tuple[int, int]:
        """[start, stop) of this rank in the epoch's row order; stop may pass the end (wrap)."""
        if self.shuffle:
            per = math.ceil(self.rows / self.size)
            return self.rank * per, (self.rank + 1) * per
        return self.rank * self.rows // self.size, (self.rank + 1) * self.rows // self.size

    def __len__(self) -> int:
        start, stop = self.rank_range()
        return math.ceil((stop - start) / self.batch_size)

    def order(self) -> list[int]:
        order = list(range(len(self.groups)))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order

    def pieces(self) -> list[Piece]:
        """The row-group slices that make up this rank's range, in order."""
        start, stop = self.rank_range()
        found: list[Piece] = []
        offset = 0
        order = self.order()
        # A range that passes the end continues from the start of the same order (padding).
        for group in order + order:
            rows = self.groups[group][2]
            first, last = max(start, offset), min(stop, offset + rows)
            if first < last:
                found.append((group, first - offset, last - first))
            offset += rows
            if offset >= stop:
                break
        return found

    def read(self, piece: Piece) -> pl.DataFrame:
        group, first, rows = piece
        key, index, _ = self.groups[group]
        return self.read_group(key, index).slice(first, rows)

    def tensors(self, frame: pl.DataFrame, chunk: int) -> list[torch.Tensor]:
        tensors = [*encode_inputs(frame, self.spec, self.preprocessing)]
        tensors.append(encode_target(frame, self.spec, self.preprocessing))
        if not self.shuffle:
            return tensors
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, chunk])
        permutation = torch.from_numpy(rng.permutation(frame.height))
        return [t[permutation] for t in tensors]

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        pieces, batch = self.pieces(), self.batch_size
        carry: list[torch.Tensor] | None = None
        for chunk, at in enumerate(range(0, len(pieces), self.buffer_groups)):
            parts = [self.read(p) for p in pieces[at : at + self.buffer_groups]]
            frame = pl.concat(parts, how="vertical_relaxed")
            tensors = self.tensors(frame, chunk)
            if carry is not None:
                tensors = [torch.cat([c, t]) for c, t in zip(carry, tensors, strict=True)]
            full = len(tensors[0]) - len(tensors[0]) % batch
            for first in range(0, full, batch):
                yield [t[first : first + batch] for t in tensors]
            carry = [t[full:] for t in tensors]
        if carry is not None and len(carry[0]):
            yield carry
