"""Package discovery only; all metadata is in pyproject.toml.

The top-level kernels/ folder is installed as the subpackage `workbench.kernels`
(a bare top-level `kernels` could collide with other distributions).
"""

from setuptools import find_packages, setup

packages = find_packages(include=["workbench", "workbench.*"])
packages += ["workbench.kernels"] + [
    "workbench.kernels." + name for name in find_packages(where="kernels")
]
setup(packages=packages)
