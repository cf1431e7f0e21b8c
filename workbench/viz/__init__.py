"""Figures of denoising: static trajectory pages and an interactive widget explorer."""

from workbench.viz.trajectory import Trajectory, animation, figure_at, trajectory_from_output, write_html

__all__ = ["Trajectory", "animation", "figure_at", "trajectory_from_output", "write_html"]
