"""The baselines AC/DC is compared against, each one module written against the public method interface."""
