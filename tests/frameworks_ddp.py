"""Run under ``torchrun --nproc-per-node 2``: one framework's data-parallel training with a method
attached by its SparsityCallback, each rank writing its final masks to ``OUT/masks-<rank>.pt``.

    python -m torch.distributed.run --nproc-per-node 2 tests/frameworks_ddp.py {hf|lightning} OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/: framework_models


def masks_of(sparsifier) -> dict:
    return {layer.name: mask.clone() for layer, mask in zip(sparsifier.layers, sparsifier.method.masks.masks)}


def hf(out: Path) -> dict:
    import transformers

    from acdc_bench.integrations.hf import SparsityCallback
    from framework_models import TokenData, tiny_bert

    callback = SparsityCallback("gmp", sparsity=0.9)
    args = transformers.TrainingArguments(output_dir=str(out / "hf"), max_steps=16, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, seed=0, learning_rate=1e-3, disable_tqdm=True,
                                          ddp_backend="gloo", save_strategy="no")
    transformers.Trainer(model=tiny_bert(), args=args, train_dataset=TokenData(), callbacks=[callback]).train()
    assert callback.sparsifier.batch_size == 4 * 2  # the global batch over both processes
    return masks_of(callback.sparsifier)


def lightning(out: Path) -> dict:
    import lightning.pytorch as pl

    from acdc_bench.integrations.lightning import SparsityCallback
    from framework_models import _lightning_module, _loader

    callback = SparsityCallback("rigl", sparsity=0.9, update_interval=2, distribution="uniform")
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=str(out / "lightning"), callbacks=[callback])
    trainer.fit(_lightning_module(), _loader())
    return masks_of(callback.sparsifier)


if __name__ == "__main__":
    framework, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    masks = {"hf": hf, "lightning": lightning}[framework](out)
    torch.save(masks, out / f"masks-{os.environ['RANK']}.pt")
