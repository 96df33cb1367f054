"""benchmarks/sparse_kernels.py runs and its backends agree (a smoke test: one small layer, one round,
under the numerics of this process: portable under nox -s tests, tests/conftest.py)."""

import sparse_kernels

from acdc_bench import numerics


def test_kernel_table_runs_and_every_backend_matches_dense_masked():
    rows = sparse_kernels.worker(1, [0.1], 1, ["fc3", "layer4"])
    assert [row["layer"] for row in rows] == ["lenet fc3 100x10", "resnet50 layer4 conv1x1 2048->512, 7x7"]
    linear, conv = rows
    # a linear layer's own sparse backend: the fixed-order kernels under portable numerics, PyTorch's
    # CSR products under native ones; a convolution has none (PyTorch has no CSR convolution)
    sparse = "fixed-order" if numerics.active() == "portable" else "csr"
    assert sparse in linear["ms"] and sparse not in conv["ms"]
    for row in rows:
        assert row["ratio"]["dense-masked"] == 1.0
        # every element within the rounding bound of its reduction (sparse_kernels._rounding_bounds)
        assert all(row["within_rounding_bound"].values()), (row["within_rounding_bound"], row["max_rel_error"])
    table = sparse_kernels.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "n/a" in table
