"""workbench: a JAX research workbench for text diffusion language models (AR2Diff)."""

__version__ = "0.1.0"


def _kernels_from_checkout() -> None:
    """Make the top-level kernels/ folder importable as `workbench.kernels` from a checkout
    that is on PYTHONPATH but not installed (as on a lent GPU machine): setup.py maps the
    folder there on install; without one, `import workbench.kernels` would fail."""
    import importlib.util
    import os
    import sys

    name = __name__ + ".kernels"
    if importlib.util.find_spec(name) is not None:  # installed (editable or not)
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_kernels_from_checkout()
