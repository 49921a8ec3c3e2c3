"""One training loop for every method: in-process now, under Ray Train in sweeps."""
