"""The demo: the main job, showing what ostinato does with simulated runners on the real library."""

from ostinato.demo.run import DemoOptions, DemoResult, run_demo

__all__ = ["DemoOptions", "DemoResult", "run_demo"]
