"""Model weights: where each engine's live, fetching them, and their published checksums."""
