"""Published reference numbers; installed as ``acdc_bench.reference`` (package data: ``published.csv``)."""
