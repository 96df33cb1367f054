"""The small models and data of the framework integration tests (tests/integration/test_integrations.py),
shared with the two-rank script that runs them under DDP (tests/frameworks_ddp.py)."""

import pytest
import torch
from torch import nn


# --------------------------------------------------------------------------- Hugging Face Trainer
class TokenData(torch.utils.data.Dataset):
    """Synthetic token classification data: 32 sequences of 16 ids, the label set by the first id."""

    def __init__(self, n: int = 32, length: int = 16, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 100, (n, length), generator=generator)
        self.labels = (self.ids[:, 0] > 50).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(config)


# --------------------------------------------------------------------------- Lightning
def _lightning_module(forward: bool = True):
    """A small classifier; ``forward=False``: the same network in a module that defines no ``forward``
    (its ``training_step`` calls the layers and logs its loss), as many LightningModules are written."""
    pl = pytest.importorskip("lightning.pytorch")

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    class NoForward(Classifier):
        forward = pl.LightningModule.forward

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

    return Classifier() if forward else NoForward()


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle fixed by the epoch (Lightning calls ``set_epoch``), so a resumed run sees the same order."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist())

    def __len__(self):
        return self.n


def _loader():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 20, generator=generator)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, sampler=EpochSampler(128))
