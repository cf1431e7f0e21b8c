"""The project's own Pallas attention kernels, imported as `workbench.kernels`."""
