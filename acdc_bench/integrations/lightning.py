"""The Lightning callback::

    from acdc_bench.integrations.lightning import SparsityCallback

    trainer = lightning.Trainer(max_epochs=10, callbacks=[SparsityCallback("rigl", sparsity=0.9)])
    trainer.fit(module, loader)

The run's length is ``trainer.estimated_stepping_batches`` (optimizer steps, after gradient
accumulation), an epoch ``trainer.num_training_batches`` batches; the batch size per step is
the training dataloader's, times the accumulation and the number of processes. The method is
attached at ``on_fit_start`` to the LightningModule and its (single) optimizer, so the
optimizer's ``step()`` runs its hooks. ``sparsity``, ``mask_sparsity``, ``sparsity_phase``
(1 sparse, 0 dense) and ``training_flops`` are logged through the module's logger at every
epoch's end. The sparsifier's state goes into the Lightning checkpoint (the callback's
``state_dict``), so ``trainer.fit(..., ckpt_path=...)`` continues exactly. At the end of
training the masks are applied for good and :attr:`SparsityCallback.final` reports the sparsity
reached beside the target.
"""

from __future__ import annotations

from typing import Any

from acdc_bench.integrations import (attach_resumed, batch_examples, check_scheduled_groups, logged_metrics, require,
                                     steps_per_epoch)

pl = require("lightning.pytorch", "lightning", "lightning")


class SparsityCallback(pl.Callback):
    """Attach ``method`` at ``sparsity`` (and its ``options``, as for :func:`acdc_bench.sparsify`)
    to a Lightning module and its optimizer."""

    def __init__(self, method: str, *, sparsity: float, input_shape=None, **options: Any):
        self.method, self.sparsity, self.input_shape, self.options = method, float(sparsity), input_shape, options
        self.sparsifier = None
        self._restored: dict | None = None
        self._parametrized: dict = {}  # a checkpoint's parametrization values, until on_fit_start
        self._load_hook = None
        #: ``Sparsifier.final`` after training: target, sparsity reached, tolerance, whether it was met.
        self.final: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Before Lightning restores a checkpoint (``ckpt_path``) into the module, whose parametrizations
        (STR's thresholds) this callback adds only at ``on_fit_start``: a checkpoint's parametrized
        keys are read as the plain module's, the parametrizations' own values kept for then."""
        self._parametrized = {}
        if self._load_hook is None:  # until on_fit_start, which attaches the method
            self._load_hook = pl_module.register_load_state_dict_pre_hook(self._unparametrize)

    def _unparametrize(self, module, state_dict, prefix, *args) -> None:
        plain = {name for name, _ in module.named_parameters()} | {name for name, _ in module.named_buffers()}
        for key in [k for k in state_dict if ".parametrizations." in k]:
            owner, _, rest = key.partition(".parametrizations.")
            attribute, _, inner = rest.partition(".")
            if f"{owner}.{attribute}" not in plain:
                continue  # the module is parametrized already: nothing to translate
            if inner == "original":
                state_dict[f"{owner}.{attribute}"] = state_dict.pop(key)
            else:  # a parametrization's own parameter (STR's threshold s): set once it exists again
                self._parametrized[key] = state_dict.pop(key)

    @property
    def state_key(self) -> str:
        return f"SparsityCallback[{self.method}, {self.sparsity:g}]"

    def on_fit_start(self, trainer, pl_module) -> None:
        from acdc_bench import sparsify

        if len(trainer.optimizers) != 1:
            raise ValueError(f"SparsityCallback drives one optimizer; this module configures {len(trainer.optimizers)}")
        self.final = None  # a second trainer.fit() is a run of its own
        if trainer.train_dataloader is None:  # max_steps without max_epochs: Lightning has not loaded it yet
            trainer.fit_loop.setup_data()
        total = int(trainer.estimated_stepping_batches)
        accumulation = trainer.accumulate_grad_batches
        batches = trainer.num_training_batches
        epoch_steps = steps_per_epoch(batches, accumulation) if batches != float("inf") else total
        loader = trainer.train_dataloader
        per_device = getattr(loader, "batch_size", None)
        batch = per_device * accumulation * trainer.world_size if per_device else None
        optimizer = trainer.optimizers[0]

        def attach():
            sparsifier = sparsify(pl_module, self.method, sparsity=self.sparsity, steps_per_epoch=epoch_steps,
                                  total_steps=total, batch_size=batch, input_shape=self.input_shape, **self.options)
            sparsifier.wrap(getattr(optimizer, "optimizer", optimizer))  # the torch optimizer inside a wrapper
            return sparsifier

        self.sparsifier = attach_resumed(pl_module, attach, self._restored)
        self._restored = None
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None
        if self._parametrized:
            import torch

            current = pl_module.state_dict(keep_vars=True)
            with torch.no_grad():
                for key, value in self._parametrized.items():
                    if key not in current:
                        raise ValueError(f"SparsityCallback: the checkpoint holds {key}, which {self.method} at "
                                         f"{self.sparsity:g} does not make: resume with the callback it was trained with")
                    current[key].copy_(value)
            self._parametrized = {}
        check_scheduled_groups(self.method, optimizer, [config.scheduler for config in trainer.lr_scheduler_configs],
                               "the lr scheduler from configure_optimizers")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """The step's hooks before its forward pass, whether ``training_step`` calls the module itself
        or a submodule of it; the FLOPs from the first batch unless ``input_shape`` was given."""
        s = self.sparsifier
        if s.method.flops is None:
            self._measure_flops(pl_module, batch, batch_idx)
        examples = batch_examples(batch)  # each batch's own (an epoch's last may be short); else the loader's
        if examples:
            s.add_examples(examples * trainer.world_size)
        s.start_step()

    def _measure_flops(self, pl_module, batch, batch_idx) -> None:
        """A module with its own ``forward``: ``module(batch[0])``, or ``module(**batch)`` for a dict. A
        module without one (its ``training_step`` calls its layers): what ``training_step`` runs on the
        batch's first example, its logging switched off (automatic optimization only: a manual one
        steps the optimizer inside the step)."""
        s = self.sparsifier
        if type(pl_module).forward is not pl.LightningModule.forward:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            try:
                s.measure_flops(**inputs) if isinstance(inputs, dict) else s.measure_flops(inputs)
                return
            except Exception as error:  # noqa: BLE001 - the module's forward does not take the batch
                raise ValueError(f"SparsityCallback: could not measure the model's FLOPs by calling the module on "
                                 f"the first batch's inputs ({type(error).__name__}: {error}); pass input_shape= "
                                 "(one example's shape) to SparsityCallback") from error
        if not pl_module.automatic_optimization:
            raise ValueError("SparsityCallback: this LightningModule defines no forward and optimizes manually, so its "
                             "FLOPs cannot be measured by running a training step; pass input_shape= (one example's "
                             "shape) to SparsityCallback")
        from lightning_utilities.core.apply_func import apply_to_collection
        import torch

        example = apply_to_collection(batch, torch.Tensor, lambda t: t[:1] if t.dim() else t)
        silent = lambda *args, **kwargs: None  # noqa: E731 - the measurement logs nothing
        pl_module.log, pl_module.log_dict = silent, silent
        try:
            s.measure_flops_of(lambda: pl_module.training_step(example, batch_idx))
        finally:
            del pl_module.log, pl_module.log_dict

    def state_dict(self) -> dict:
        return self.sparsifier.state_dict() if self.sparsifier is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        if self.sparsifier is not None:
            self.sparsifier.load_state_dict(state_dict)
        else:  # restored before on_fit_start attaches the method: kept until then
            self._restored = state_dict

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        s = self.sparsifier
        if s is None:
            return
        pl_module.log_dict(logged_metrics(s), on_step=False, on_epoch=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.sparsifier is not None and self.final is None:
            self.sparsifier.finalize()
            self.final = self.sparsifier.final
