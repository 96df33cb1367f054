"""``python -m acdc_bench`` (and ``torchrun -m acdc_bench``) runs the command line."""

from acdc_bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
