"""`python -m workbench.benchmarks.tuning`: the block-size sweep (see the package docstring)."""

from workbench.benchmarks.tuning import main

main()
