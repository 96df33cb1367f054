"""The Hugging Face ``Trainer`` callback::

    from acdc_bench.integrations.hf import SparsityCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[SparsityCallback("gmp", sparsity=0.9)])
    trainer.train()

The run's length and batch come from the Trainer (``max_steps``, or the epochs times the
optimizer steps per epoch after gradient accumulation; the global batch over all processes).
The method is attached at ``on_train_begin`` to the model and the Trainer's optimizer, so
``optimizer.step()`` runs its hooks; a transformer prunes the Linear layers of its blocks by
default (:func:`acdc_bench.core.sparsity.prunable_layers`). Every log line gets ``sparsity``,
``mask_sparsity``, ``sparsity_phase`` (1 sparse, 0 dense) and ``training_flops``. The
sparsifier's state is saved into each checkpoint folder (``acdc_bench_sparsifier.pt``) and
restored from the checkpoint ``trainer.train(resume_from_checkpoint=...)`` resumes from, so a
resumed run continues exactly. At the end of training the masks are applied for good
(``finalize``) and :attr:`SparsityCallback.final` reports the sparsity reached beside the target.
"""

from __future__ import annotations

import os
from typing import Any

from acdc_bench.integrations import (STATE_FILE, attach_resumed, batch_examples, check_scheduled_groups, logged_metrics,
                                     require, steps_per_epoch)

transformers = require("transformers", "hf", "hf")


def _fingerprint(weights: dict) -> str:
    """What ties a sparsifier file to the checkpoint beside it: a digest of the first values of each
    pruned layer's weight, as saved (the Trainer loads the checkpoint's weights before resuming)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].detach().reshape(-1)[:1024].float().cpu().numpy().tobytes())
    return digest.hexdigest()


class SparsityCallback(transformers.TrainerCallback):
    """Attach ``method`` at ``sparsity`` (and its ``options``, as for :func:`acdc_bench.sparsify`)
    to a ``transformers.Trainer``'s model and optimizer."""

    def __init__(self, method: str, *, sparsity: float, input_shape=None, **options: Any):
        self.method, self.sparsity, self.input_shape, self.options = method, float(sparsity), input_shape, options
        self.sparsifier = None
        #: ``Sparsifier.final`` after training: target, sparsity reached, tolerance, whether it was met.
        self.final: dict | None = None
        self._counting = None  # the forward pre-hook that counts each step's examples

    def on_init_end(self, args, state, control, model=None, **kwargs):
        """A method whose set-up adds parameters (STR's thresholds) sets them up now, when the Trainer is
        made: its optimizer, built at ``train()``, then holds them, and a checkpoint resumed from (which
        holds them and their optimizer state) loads into a model that has them. ``on_train_begin``
        attaches the method to the same ones (its set-up reuses them)."""
        from acdc_bench import sparsify
        from acdc_bench.methods import get_method

        if model is not None and get_method(self.method).adds_parameters:
            sparsify(model, self.method, sparsity=self.sparsity, total_steps=1, steps_per_epoch=1, batch_size=1,
                     **self.options)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        from acdc_bench import sparsify
        from acdc_bench.core.io import load_checkpoint
        from acdc_bench.core.sparsity import raw_weight

        if optimizer is None or model is None:
            raise RuntimeError("SparsityCallback: the Trainer passed no model or optimizer to on_train_begin")
        self.final = None  # a second trainer.train() is a run of its own
        accumulation = args.gradient_accumulation_steps
        try:
            epoch_steps = steps_per_epoch(len(train_dataloader), accumulation)
        except TypeError:  # an iterable data set: max_steps is the whole run
            epoch_steps = state.max_steps
        batch = args.per_device_train_batch_size * accumulation * max(args.world_size, 1)
        saved = None
        if state.global_step > 0:  # resuming: the checkpoint Trainer resumed from is checkpoint-<global step>
            path = os.path.join(args.output_dir, f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}",
                                STATE_FILE)
            if not os.path.exists(path):
                raise FileNotFoundError(f"SparsityCallback: resuming at step {state.global_step}, the sparsifier's state "
                                        f"is looked for in args.output_dir, at {path}, which does not exist: resume "
                                        f"from a checkpoint folder inside output_dir written with this callback (a "
                                        f"checkpoint kept elsewhere: copy it into output_dir)")
            saved = load_checkpoint(path)
            if "fingerprint" not in saved:  # written before files carried one: the sparsifier's state alone
                saved = {"sparsifier": saved}
            elif _fingerprint({name: raw_weight(model.get_submodule(name)) for name in saved["layers"]}) \
                    != saved["fingerprint"]:
                raise ValueError(f"SparsityCallback: {path} belongs to another run than the checkpoint the Trainer "
                                 f"resumed from (the weights it was saved with differ from those loaded): resume from "
                                 f"a checkpoint inside output_dir, or give this run an output_dir of its own")
            saved = saved["sparsifier"]

        def attach():
            sparsifier = sparsify(model, self.method, sparsity=self.sparsity, steps_per_epoch=epoch_steps,
                                  total_steps=state.max_steps, batch_size=batch, input_shape=self.input_shape,
                                  **self.options)
            # the torch optimizer inside accelerate's wrapper: its step() is what the wrapper calls
            sparsifier.wrap(getattr(optimizer, "optimizer", optimizer))
            return sparsifier

        self.sparsifier = attach_resumed(model, attach, saved)
        self._count_examples(model, max(args.world_size, 1))
        scheduler = kwargs.get("lr_scheduler")
        check_scheduled_groups(self.method, optimizer, [scheduler] if scheduler is not None else [],
                               "the lr scheduler the Trainer built before")

    def _count_examples(self, model, world: int) -> None:
        """Meter each step's examples as its batches hold them (the last step of an epoch under gradient
        accumulation may have fewer batches): every training forward of the model adds its batch's,
        times the processes. Where the hook does not fire (a model the Trainer compiled), the meter
        counts the full batch."""
        import torch

        if self._counting is not None:
            self._counting.remove()

        def count(module, args, kwargs):
            examples = batch_examples(args, kwargs) if module.training else None
            if examples:
                self.sparsifier.add_examples(examples * world)

        self._counting = model.register_forward_pre_hook(torch.compiler.disable(count), with_kwargs=True)

    def on_step_begin(self, args, state, control, **kwargs):
        # the step's hooks before its first forward pass even where the model's forward pre-hook does
        # not fire (a model the Trainer compiled, torch_compile=True)
        if self.sparsifier is not None and self.sparsifier.method.flops is not None:
            self.sparsifier.start_step()

    def on_save(self, args, state, control, **kwargs):
        if self.sparsifier is None or not state.is_world_process_zero:
            return
        from acdc_bench.core.io import atomic_torch_save

        folder = os.path.join(args.output_dir, f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        layers = [layer.name for layer in self.sparsifier.layers]
        atomic_torch_save({"sparsifier": self.sparsifier.state_dict(), "layers": layers,
                           "fingerprint": _fingerprint({layer.name: layer.weight for layer in self.sparsifier.layers})},
                          os.path.join(folder, STATE_FILE))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.sparsifier is None or logs is None:
            return
        extra = logged_metrics(self.sparsifier)
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)  # the Trainer copied the line before the callbacks saw it

    def on_train_end(self, args, state, control, **kwargs):
        if self._counting is not None:
            self._counting.remove()
            self._counting = None
        if self.sparsifier is not None and self.final is None:
            self.sparsifier.finalize()
            self.final = self.sparsifier.final


