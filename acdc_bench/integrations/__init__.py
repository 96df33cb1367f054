"""Callbacks that attach a method to the training loops researchers use, through :func:`acdc_bench.sparsify`:

- :mod:`acdc_bench.integrations.hf`: ``SparsityCallback`` for the Hugging Face ``Trainer``
  (the ``hf`` extra);
- :mod:`acdc_bench.integrations.lightning`: ``SparsityCallback`` for Lightning
  (the ``lightning`` extra).

Importing :mod:`acdc_bench` never needs them; importing an integration without its framework is
an error naming the extra to install.
"""

from __future__ import annotations

import importlib


def require(module: str, extra: str, integration: str):
    """Import ``module`` or raise an ImportError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"acdc_bench.integrations.{integration} needs {module.split('.')[0]}: install the "
                          f"project's '{extra}' extra (pip install '.[{extra}]' in a checkout)") from error


#: The file beside a framework's checkpoint that holds the sparsifier's state (masks, step, meter).
STATE_FILE = "acdc_bench_sparsifier.pt"


def steps_per_epoch(batches: int, accumulation: int) -> int:
    """Optimizer steps in an epoch of ``batches`` batches with ``accumulation`` batches a step (a
    shorter last step counts), as the Trainer and Lightning count them."""
    return max(batches // accumulation + int(batches % accumulation > 0), 1)


def batch_examples(*values) -> int | None:
    """The examples in a batch: the first dimension of the first tensor found in ``values`` (a
    model's positional and keyword inputs, or a data loader's batch), None where none is."""
    import torch

    stack = list(values)
    while stack:
        value = stack.pop(0)
        if isinstance(value, torch.Tensor):
            if value.dim() > 0:
                return int(value.shape[0])
        elif isinstance(value, dict):
            stack[:0] = list(value.values())
        elif isinstance(value, (list, tuple)):
            stack[:0] = list(value)
    return None


def check_scheduled_groups(method: str, optimizer, schedulers, whose: str) -> None:
    """Refuse a method that added a parameter group to an optimizer whose lr schedulers, built before it
    was attached (``whose``), would not step that group (each keeps one base lr per group)."""
    groups = len(getattr(optimizer, "optimizer", optimizer).param_groups)
    for scheduler in schedulers:
        if len(getattr(scheduler, "base_lrs", [None] * groups)) != groups:
            raise ValueError(f"SparsityCallback: {method} added a parameter group to the optimizer, which {whose} "
                             f"does not step: use the method's options that keep the groups (STR: decay_all=True)")


def logged_metrics(sparsifier) -> dict:
    """What the callbacks log: ``sparsity``, ``mask_sparsity``, ``sparsity_phase`` (1 sparse, 0
    dense) and ``training_flops``."""
    return {"sparsity": sparsifier.sparsity, "mask_sparsity": sparsifier.mask_sparsity,
            "sparsity_phase": 1.0 if sparsifier.phase == "sparse" else 0.0,
            "training_flops": float(sparsifier.training_flops)}


def attach_resumed(model, attach, state: dict | None):
    """``attach()`` (a :func:`acdc_bench.sparsify` call) on a model a framework has already restored
    from a checkpoint, then the sparsifier's saved ``state``. A method's ``setup`` may apply its
    initial masks to the weights (RigL's random ones): the restored parameters are put back after
    the saved masks are loaded, so the run continues from exactly what the checkpoint holds."""
    import torch

    if state is None:
        return attach()
    restored = {name: param.detach().clone() for name, param in model.named_parameters()}
    sparsifier = attach()
    sparsifier.load_state_dict(state)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in restored:
                param.copy_(restored[name])
    return sparsifier
