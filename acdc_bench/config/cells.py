"""Paper-suite cells (``reproduce.variants``): what each cell's runs are asked to compute.

A suite's ``reproduce.variants`` lists named cells, one per experiment of the published
tables; ``plan_runs`` (:mod:`acdc_bench.run.launch`) expands each into runs, one per
sparsity and seed::

    reproduce:
      seeds: [0]
      variants:
        - cell: rigl-5x-uniform          # unique name (reproduce --cells NAME selects it)
          method: rigl                   # a registered method
          options: {epochs_multiplier: 5, distribution: uniform, keep_dense: [conv1]}
          sparsities: [0.8, 0.9, 0.95, 0.965]
          variant: 5x uniform            # the runs' variant tag (result.json, compare, leaderboard, plots)
          published: {source_id: rigl-readme, variant: 5x, distribution: uniform (first layer dense)}

- ``options`` replace keys of the suite's ``methods.<method>`` for this cell's runs;
  ``recipe`` (keys among ``optimizer``, ``lr_schedule``, ``label_smoothing``,
  ``batch_size``, ``amp``, ``epochs``, ``init``, ``targets``) replaces keys of ``methods.<method>.recipe``
  (under ``budget: paper``; a matched budget runs one shared recipe), e.g. ``epochs: 200``
  for AC/DC 2x. The training multiplier stays relative to the suite's dense run.
- ``recipe_of`` runs the cell on another method's ``methods.<name>.recipe`` (its ``recipe``
  keys then replace that recipe's): ``{cell: dense-rigl, method: dense, recipe_of: rigl}`` is
  the dense run of RigL's recipe, the one RigL's published dense row is compared with.
  Cells of one method, variant and sparsity are told apart by it.
- ``variant`` (default: what the run records without it, ``1x`` for RigL, else ``''``) is
  read word by word by :func:`acdc_bench.report.compare.match_published`: a training
  length (``2x``, ``1.5x``), a distribution word when the cell's differs from the method's
  usual one (``uniform``), a structure word (``2:4``). Cells of one method need distinct
  tags: the reports group runs by method, variant and sparsity.
- ``published`` names the row the cell reproduces (``null`` or absent: none is published);
  the dry run (:mod:`acdc_bench.report.dryrun`) shows the row ``compare`` will match, and the
  tests hold the two equal.
- ``official`` lists the official configurations the cell follows, each ``owner/name path``
  as in ``official_configs.csv`` (the shipped list of the official codes' configurations, each
  named by a cell or given the reason none runs it); a published row that names its
  configuration is only paired with a cell that lists it.
- A method given to ``reproduce --methods`` that has no cell runs plain at ``--sparsities``
  (else ``reproduce.sparsities``); ``--sparsities`` keeps each cell's listed sparsities
  among those given. Under ``budget: matched`` every method gets AC/DC's FLOPs, so
  training-length cells (``2x``, ``5x``, ``1.5x``) would repeat the 1x experiment: they
  are left out.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from acdc_bench.config.suite import RECIPE_KEYS, ConfigError, Suite, check_sparsity, validate_method_recipe
from acdc_bench.config.run import default_variant

CELL_KEYS = ("cell", "method", "options", "recipe", "recipe_of", "sparsities", "variant", "published", "official",
             "note")
PUBLISHED_KEYS = ("source_id", "variant", "distribution")
#: A training-length word of a variant tag (``2x``, ``1.5x``).
LENGTH_WORD = re.compile(r"\d+(\.\d+)?x")


def _where(suite: Suite) -> str:
    return f"{suite.where}: reproduce.variants"


def variant_length(tag: str | None) -> float:
    """The training length of a variant tag (``'5x uniform'`` -> 5.0; no length word: 1.0)."""
    for word in str(tag or "").lower().split():
        if LENGTH_WORD.fullmatch(word):
            return float(word[:-1])
    return 1.0


def length_key(tag: str | None) -> str:
    """The training length of a variant tag as the reports key it: '' for the standard length
    (no length word, or ``1x``), else ``'2x'``, ``'1.5x'``."""
    length = variant_length(tag)
    return "" if length == 1.0 else f"{length:g}x"


def suite_cells(suite: Suite) -> list[dict]:
    """The suite's ``reproduce.variants``, checked and filled in (``[]`` when it has none).

    Each cell: ``cell``, ``method``, ``options``, ``recipe``, ``sparsities`` (``[0.0]`` for
    dense), ``variant`` (None: the run's own), ``tag`` (the variant its runs record),
    ``published`` (dict or None), ``official`` (list), ``note``. Errors name the file, the cell and the allowed values.
    """
    from acdc_bench.methods import get_method, make_config, method_names

    where = _where(suite)
    raw = suite.reproduce.get("variants")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list of cells (mappings with keys {', '.join(CELL_KEYS)})")
    cells, names, seen = [], set(), {}
    for index, entry in enumerate(raw):
        here = f"{where}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{here} must be a mapping with keys {', '.join(CELL_KEYS)}, got {entry!r}")
        bad = sorted(set(entry) - set(CELL_KEYS))
        if bad:
            raise ConfigError(f"{here}: unknown key(s) {bad}; allowed: {', '.join(CELL_KEYS)}")
        name = entry.get("cell")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{here}: 'cell' must be a non-empty name, got {name!r}")
        here = f"{where}[{index}] (cell {name})"
        if name in names:
            raise ConfigError(f"{here}: the name is used by another cell; cell names must be unique")
        names.add(name)
        method = entry.get("method")
        if method not in method_names():
            raise ConfigError(f"{here}: method {method!r} is unknown; allowed: {', '.join(method_names())}")
        options = entry.get("options") or {}
        recipe = entry.get("recipe") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{here}: options must be a mapping of {method}'s options, got {options!r}")
        if not isinstance(recipe, dict) or set(recipe) - {*RECIPE_KEYS, "targets"}:
            raise ConfigError(f"{here}: recipe must be a mapping with keys among {', '.join(RECIPE_KEYS)}, "
                              f"targets, got {recipe!r}")
        merged = {**suite.method_options(method), **options}
        try:
            method_config = make_config(get_method(method), merged)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{here}: options: {error}") from error
        recipe_of = entry.get("recipe_of")
        if recipe_of is not None:  # e.g. a dense run on RigL's recipe, beside RigL's published dense row
            if suite.method_recipe(recipe_of) is None:
                with_recipes = sorted(suite.recipes)
                raise ConfigError(f"{here}: recipe_of {recipe_of!r} names no method with a recipe; allowed: "
                                  f"{', '.join(with_recipes) or 'none (no methods.<name>.recipe in this suite)'}")
            recipe = {**copy.deepcopy(suite.method_recipe(recipe_of)), **recipe}
        if recipe:
            validate_method_recipe(suite.as_keys(), {**(suite.method_recipe(method) or {}), **recipe},
                                   f"{here}: recipe")
        if method == "dense":
            sparsities = [0.0]
        else:
            listed = entry.get("sparsities")
            if not isinstance(listed, list) or not listed:
                raise ConfigError(f"{here}: sparsities must be a non-empty list of target sparsities, e.g. [0.9]")
            sparsities = [check_sparsity(value, f"{here}: sparsities") for value in listed]
        pattern = method_config.pattern
        if pattern:
            from acdc_bench.core.sparsity import check_pattern_target

            for sparsity in sparsities:
                try:
                    check_pattern_target(pattern, sparsity)
                except ValueError as error:
                    raise ConfigError(f"{here}: sparsities: {error}") from error
        variant = entry.get("variant")
        if variant is not None and not isinstance(variant, str):
            raise ConfigError(f"{here}: variant must be a text tag such as '2x uniform', got {variant!r}")
        published = entry.get("published")
        if published is not None and (not isinstance(published, dict) or set(published) - set(PUBLISHED_KEYS)):
            raise ConfigError(f"{here}: published must be null or a mapping with keys among "
                              f"{', '.join(PUBLISHED_KEYS)}, got {published!r}")
        official = entry.get("official") or []
        if not isinstance(official, list) or not all(isinstance(item, str) and len(item.split()) == 2
                                                      for item in official):
            raise ConfigError(f"{here}: official must be a list of 'owner/name path' entries, e.g. "
                              f"[RAIVNLab/STR configs/largescale/resnet50-str.yaml], got {official!r}")
        tag = variant if variant is not None else default_variant(method_config)
        for sparsity in sparsities:
            key = (method, tag.strip().lower(), round(sparsity, 6), recipe_of or "")
            if key in seen:
                raise ConfigError(f"{here}: cell {seen[key]!r} already runs {method} with variant {tag!r} at "
                                  f"sparsity {sparsity:g}; give one of them another variant tag")
            seen[key] = name
        cells.append({"cell": name, "method": method, "options": dict(options), "recipe": dict(recipe),
                      "recipe_of": recipe_of,
                      "sparsities": sparsities, "variant": variant, "tag": tag,
                      "published": dict(published) if published is not None else None,
                      "official": list(official), "note": entry.get("note") or ""})
    return cells


@dataclass(frozen=True)
class RunSpec:
    """One planned run. A run of a paper-suite cell (``reproduce.variants``,
    :mod:`acdc_bench.config.cells`) also carries the cell's name, its variant tag (None: the
    run's own) and its method options and recipe keys over the suite's."""

    method: str
    sparsity: float
    seed: int
    budget: str  # "paper" or "matched"
    cell: str = ""
    variant: str | None = None
    options: dict | None = None
    recipe: dict | None = None

    def __hash__(self) -> int:  # options and recipe are dicts: the cell's name stands for them
        return hash((self.method, self.sparsity, self.seed, self.budget, self.cell, self.variant))
