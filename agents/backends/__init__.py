"""NVML backends behind one interface (`GpuBackend`)."""

from agents.backends.base import GpuBackend

__all__ = ["GpuBackend"]
