"""A user's model factory and loss, as Lepton calls them.

``build(info, **kwargs)`` gets Lepton's description of the data (``info.inputs`` is
``["numeric", "categorical"]`` here) and returns a ``torch.nn.Module`` whose ``forward``
takes those inputs in that order: numeric features already imputed and standardized, and
categorical vocabulary indices (0 is the unknown bucket).
"""

import torch
from torch import nn

from lepton_core.data import DatasetInfo


class ChurnNet(nn.Module):
    def __init__(self, info: DatasetInfo, hidden: int, embedding_dim: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, embedding_dim) for n in info.categorical_cardinalities
        )
        width = info.num_numeric + embedding_dim * len(self.embeddings)
        self.net = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, info.num_outputs)
        )

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        embedded = [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.net(torch.cat([numeric, *embedded], dim=1))


def build(info: DatasetInfo, hidden: int = 64, embedding_dim: int = 4) -> nn.Module:
    return ChurnNet(info, hidden, embedding_dim)


def smoothed_cross_entropy(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with label smoothing: the labels here are noisy."""
    return nn.functional.cross_entropy(outputs, target, label_smoothing=0.05)
