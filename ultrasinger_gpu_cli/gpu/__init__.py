"""The machine: NVML, the GPUs and their CUDA numbering, the frameworks, sampling and monitoring."""
