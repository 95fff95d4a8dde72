"""How long, and is it right: correctness against a float64 reference, timers, adaptive stopping, the runner."""
