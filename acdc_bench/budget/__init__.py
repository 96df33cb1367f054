"""Training-FLOP budgets: planning a run without training it (``plan``), matching a method's
length to a reference's budget (``matching``), and calibrating emergent-cost methods such as
STR by running (``calibrate``)."""
