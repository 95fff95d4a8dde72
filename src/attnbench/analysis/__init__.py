"""How sure, and against what: statistics, FLOP and byte counts, the roofline, the hardware and its ceilings, cost."""
