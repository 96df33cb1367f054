"""A run's protocol in the terms of the published table: what the reports pair runs and published rows by."""

from __future__ import annotations

import math

from acdc_bench.config.run import RunConfig

#: What a published number's protocol says, beside what it measured (``published.csv`` columns).
PROTOCOL_FIELDS = ("recipe", "denominator", "label_smoothing", "length", "batch_size")
#: A run's protocol adds ``extrapolated``: its method values are not a published run's (a suite's
#: ``unofficial: true`` entry, e.g. STR's lambda at a target its authors published no config for).
RUN_PROTOCOL_FIELDS = (*PROTOCOL_FIELDS, "extrapolated")


def run_protocol(config: dict | RunConfig) -> dict:
    """The protocol a run was trained under, in the terms of ``published.csv``.

    ``recipe``: the family of the recipe it ran (``recipe.family``: the ``family`` of the
    ``methods.<name>.recipe`` it ran on, else the suite's ``recipe_family``; '' when neither says);
    ``denominator``: ``all`` when its target counts every prunable weight, ``pruned layers`` when
    layers are left dense (``keep_dense``, ``exclude``, ``include``) and out of it ('' for dense);
    ``label_smoothing``;
    ``length``: its epochs over the suite's (RigL 5x: 5); ``batch_size``; ``extrapolated``: its
    method options are marked ``unofficial`` (no published row is then the same protocol).
    """
    if isinstance(config, RunConfig):
        config = config.as_dict()
    recipe = config.get("recipe") or {}
    options = config.get("method_options") or config.get("method_config") or {}
    if config.get("method") == "dense":
        denominator = ""
    else:
        left_out = options.get("keep_dense") or options.get("exclude") or options.get("include")
        denominator = "pruned layers" if left_out else "all"
    epochs, suite_epochs = config.get("epochs"), config.get("suite_epochs") or config.get("epochs")
    return {
        "recipe": str(recipe.get("family") or ""),
        "denominator": denominator,
        "label_smoothing": float(recipe.get("label_smoothing", config.get("label_smoothing", 0.0)) or 0.0),
        "length": round(float(epochs) / float(suite_epochs), 4) if epochs and suite_epochs else math.nan,
        "batch_size": int(recipe.get("batch_size", config.get("batch_size", 0)) or 0),
        "extrapolated": bool(options.get("unofficial", False)),
    }
