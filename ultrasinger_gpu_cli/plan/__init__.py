"""Planning: what this machine has (detection), the tier table and the one resolver (GPU facts, mode, limits, overrides -> a plan); no backend is imported here."""
