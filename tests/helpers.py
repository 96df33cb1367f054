"""Shared by the test modules: the Fashion-MNIST skip mark and a short AC/DC suite."""

import os
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.exists() and not os.environ.get("ACDC_BENCH_DATA"),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
#: --set overrides for a short AC/DC on 2,000 examples: dense 0, sparse 1, dense 2, sparse 3
#: (4 epochs of 8 steps, 1-epoch phases).
SHORT = ["train_subset=2000", "epochs=4", "methods.acdc.schedule_epochs=4", "methods.acdc.warmup_epochs=1",
         "methods.acdc.phase_epochs=1", "methods.acdc.final_dense_epochs=1", "methods.acdc.final_sparse_epochs=1"]
