"""``acdc_bench.testing.check_method``: every built-in method holds the contract, and a method that
breaks a clause is caught with that clause named."""

from __future__ import annotations

import pytest
import torch

from acdc_bench.methods import MaskedMethod, method_names, register_method
from acdc_bench.testing import ContractReport, MethodContractError, check_method

BUILT_IN = ("dense", "acdc", "gmp", "rigl", "set", "str")


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_method_holds_the_contract(name, one_thread):
    assert set(BUILT_IN) <= set(method_names())
    report = check_method(name)
    assert isinstance(report, ContractReport)
    clauses = {"hooks", "target", "finalize", "resume", "plan", "ranks"}
    if name == "str":  # its cost emerges from training: said, not silently passed
        assert set(report.passed) == clauses - {"plan"} and "calibration_option" in report.skipped["plan"]
    else:
        assert set(report.passed) == clauses and not report.skipped


@register_method("contract-never-prunes")
class NeverPrunes(MaskedMethod):
    """Promises the target, never prunes."""

    def planned_densities(self, epoch):
        return self.distribution_densities(self.target_sparsity)


@register_method("contract-forgets")
class Forgets(MaskedMethod):
    """Prunes at epoch 0, but its state_dict forgets the masks: a resume trains dense."""

    def on_epoch_start(self, epoch):
        if epoch == 0:
            self.prune_by_magnitude(self.target_sparsity)

    def planned_densities(self, epoch):
        return self.distribution_densities(self.target_sparsity)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@register_method("contract-plans-dense")
class PlansDense(Forgets):
    """Keeps its state, but plans every epoch dense."""

    state_dict = MaskedMethod.state_dict
    load_state_dict = MaskedMethod.load_state_dict

    def planned_densities(self, epoch):
        return [1.0] * len(self.layers)


@register_method("contract-per-rank")
class PerRank(MaskedMethod):
    """Draws random masks at the target from a generator seeded by the rank: ranks disagree."""

    def on_epoch_start(self, epoch):
        if epoch == 0:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            generator = torch.Generator().manual_seed(rank)
            masks = []
            for layer, density in zip(self.layers, self.planned_densities(0)):
                keep = torch.zeros(layer.numel, dtype=torch.bool)
                keep[torch.randperm(layer.numel, generator=generator)[:round(density * layer.numel)]] = True
                masks.append(keep.view(layer.weight.shape))
            self.masks.set(masks)
            self.masks.apply_to_weights()
            self.masking = True

    def planned_densities(self, epoch):
        return self.distribution_densities(self.target_sparsity)


@register_method("contract-stale-counts")
class StaleCounts(MaskedMethod):
    """Writes its masks into the list itself, past ``MaskSet.set``: the counts stay dense."""

    def on_epoch_start(self, epoch):
        if epoch == 0:
            for index, (layer, density) in enumerate(zip(self.layers, self.planned_densities(0))):
                flat = layer.weight.detach().abs().flatten()
                keep = torch.zeros_like(flat, dtype=torch.bool)
                keep[flat.argsort(descending=True)[:round(density * layer.numel)]] = True
                self.masks.masks[index] = keep.view(layer.weight.shape)
            self.masks.apply_to_weights()
            self.masking = True

    def planned_densities(self, epoch):
        return self.distribution_densities(self.target_sparsity)


@register_method("contract-saves-nothing")
class SavesNothing(Forgets):
    """Its state_dict forgets the masks; its load_state_dict is the base's, which wants them."""

    load_state_dict = MaskedMethod.load_state_dict


@pytest.mark.parametrize("name, options, clause", [
    ("contract-stale-counts", {"distribution": "uniform"}, "hooks"),
    ("contract-saves-nothing", {"distribution": "uniform"}, "resume"),
    ("contract-never-prunes", {"distribution": "uniform"}, "target"),
    ("contract-forgets", {"distribution": "uniform"}, "resume"),
    ("contract-plans-dense", {"distribution": "uniform"}, "plan"),
    ("contract-per-rank", {"distribution": "uniform"}, "ranks"),
])
def test_a_method_that_breaks_a_clause_is_caught_naming_it(name, options, clause, one_thread):
    with pytest.raises(MethodContractError, match=rf"^{name}: {clause}: "):
        check_method(name, options=options)


def test_a_method_whose_options_do_not_declare_the_harness_features_is_refused_at_registration():
    import dataclasses

    from acdc_bench.methods import MethodConfig, find_method

    @dataclasses.dataclass
    class Plain:  # not a MethodConfig: the harness would have to guess what it has
        ramp: float = 0.5

    with pytest.raises(TypeError, match=r"Config must be a dataclass subclassing acdc_bench\.methods\.MethodConfig"):
        @register_method("contract-plain-options")
        class PlainOptions(MaskedMethod):
            Config = Plain
    assert find_method("contract-plain-options") is None

    @dataclasses.dataclass
    class Declared(MethodConfig):
        ramp: float = 0.5

    # the base's declarations are the "none" of each feature, and no dataclass field (the run id is unchanged)
    options = Declared()
    assert (options.include, options.exclude, options.pattern, options.epochs_multiplier) == ((), (), None, None)
    assert options.for_batch_size(64) is options and options.options_for(0.9) == {"ramp": 0.5}
    assert [field.name for field in dataclasses.fields(Declared)] == ["ramp"]


def test_registration_refuses_options_that_are_no_options_and_a_name_taken_by_another_file(tmp_path, monkeypatch):
    import dataclasses
    import sys

    from acdc_bench.methods import MaskedConfig, MethodConfig, find_method

    class Undecorated(MaskedConfig):  # its field is no dataclass field: `amount=` would be unknown
        amount: float = 0.3

    with pytest.raises(TypeError, match=r"declares \['amount'\] but is not decorated with @dataclasses.dataclass"):
        @register_method("contract-undecorated")
        class UsesUndecorated(MaskedMethod):
            Config = Undecorated

    @dataclasses.dataclass
    class NotMasked(MethodConfig):
        amount: float = 0.3

    with pytest.raises(TypeError, match=r"is a MaskedMethod, so its Config must subclass .*MaskedConfig"):
        @register_method("contract-not-masked")
        class UsesNotMasked(MaskedMethod):
            Config = NotMasked
    assert find_method("contract-undecorated") is None and find_method("contract-not-masked") is None

    # two plugin files whose classes share a name, registered under one method name: the second is refused
    for package in ("contract_plugin_a", "contract_plugin_b"):
        (tmp_path / f"{package}.py").write_text(
            "from acdc_bench.methods import MaskedMethod, register_method\n\n"
            "@register_method('contract-same-name')\nclass Method(MaskedMethod):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import contract_plugin_a  # noqa: F401
    with pytest.raises(ValueError, match=r"'contract-same-name' is already registered by contract_plugin_a\.Method"):
        import contract_plugin_b  # noqa: F401
    assert find_method("contract-same-name").__module__ == "contract_plugin_a"
    sys.modules.pop("contract_plugin_b", None)
