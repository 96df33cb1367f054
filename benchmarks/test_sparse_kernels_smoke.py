"""benchmarks/sparse_kernels.py runs and its backends agree (a smoke test: one small layer, one round)."""

import sparse_kernels


def test_kernel_table_runs_and_every_backend_matches_dense_masked():
    rows = sparse_kernels.worker(1, [0.1], 1, ["fc3", "layer4"])
    assert [row["layer"] for row in rows] == ["lenet fc3 100x10", "resnet50 layer4 conv1x1 2048->512, 7x7"]
    linear, conv = rows
    assert "csr" in linear["ms"] and "csr" not in conv["ms"]  # PyTorch has no CSR convolution
    for row in rows:
        assert row["ratio"]["dense-masked"] == 1.0
        # every element within the rounding bound of its reduction (sparse_kernels._rounding_bounds)
        assert all(row["within_rounding_bound"].values()), (row["within_rounding_bound"], row["max_rel_error"])
    table = sparse_kernels.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "n/a" in table
