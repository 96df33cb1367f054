"""The pieces every method and every run share: prunable layers and masks, magnitude top-k,
sparsity distributions (``sparsity``), FLOP counting and metering (``flops``), atomic file
writes and safe checkpoint loading (``io``). Nothing here knows about runs or methods."""
