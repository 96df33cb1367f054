"""A matched run's cell: the budget it is matched to is one of its inputs. The suite's length and the
reference's options set AC/DC's budget, so runs of two suite lengths are two cells, whereas the
suite as its file says hashes as the cell of the suite file's own budget (the shipped runs' cells)."""

from acdc_bench.budget.matching import resolve_budget
from acdc_bench.config import cell_id, load_suite

SUITE = "fashion-mnist-10"  # the default suite, budget matched to AC/DC


def _config(*overrides: str, method: str = "gmp", seed: int = 0):
    return resolve_budget(load_suite(SUITE, list(overrides)), method, 0.9, seed, "matched")


def test_matched_runs_of_two_suite_lengths_are_two_cells_and_their_seeds_one():
    three = [_config("epochs=3", seed=seed) for seed in (0, 1)]
    four = _config("epochs=4")
    assert three[0].budget.mode == four.budget.mode == "matched"
    assert three[0].suite_epochs == 3 and four.suite_epochs == 4
    assert three[0].cell == three[1].cell  # one cell: its seeds
    assert four.cell != three[0].cell
    assert _config().cell not in (three[0].cell, four.cell)


def test_a_changed_budget_reference_is_another_cell():
    changed = _config("methods.acdc.phase_epochs=2")
    assert changed.budget.reference_training_flops != _config().budget.reference_training_flops
    assert changed.cell != _config().cell


def test_the_suite_as_written_keeps_the_cell_it_hashes_without_its_budget_inputs():
    suite = load_suite(SUITE)
    written = _config(f"epochs={suite.epochs}")  # the file's own length, given again
    bare = suite.replace(written_budget_inputs=None)
    assert written.cell == _config().cell == cell_id(bare, "gmp", 0.9, "matched", None)
