"""ugpu's benchmarks: ugpu against the reference way of using the same libraries."""
