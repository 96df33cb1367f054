"""benchmarks/sparse_kernels.py runs and its backends agree (a smoke test: one small layer, one round)."""

import sparse_kernels


def test_kernel_table_runs_and_every_backend_matches_dense_masked():
    rows = sparse_kernels.worker(1, [0.1], 1, ["fc3", "layer4"])
    assert [row["layer"] for row in rows] == ["lenet fc3 100x10", "resnet50 layer4 conv1x1 2048->512, 7x7"]
    linear, conv = rows
    assert "csr" in linear["ms"] and "csr" not in conv["ms"]  # PyTorch has no CSR convolution
    for row in rows:
        assert row["ratio"]["dense-masked"] == 1.0
        assert all(error < 1e-5 for error in row["max_rel_error"].values()), row["max_rel_error"]
    table = sparse_kernels.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "n/a" in table
