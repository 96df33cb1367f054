"""One run and many: the training loop (``loop``), data parallelism (``distributed``), the
run-folder format and its lock (``folder``), a whole suite locally or on Slurm (``launch``),
and Weights & Biases (``tracking``)."""
