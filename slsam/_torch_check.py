"""The torch that slsam._C was built against must be the one running.

A C++ extension links against one torch's C++ ABI; loaded into another it
fails with an undefined symbol or, worse, loads and misbehaves. The build
records ``torch.__version__`` in ``slsam/_build_info.py`` (setup.py), and
``import slsam`` compares it here before loading the extension.
"""

from __future__ import annotations

import torch

REBUILD = (
    "pip install --no-build-isolation --no-deps --no-cache-dir --force-reinstall <slsam sdist or checkout>"
    " (in a checkout: pip install --no-build-isolation -e .)"
)


def mismatch_message(built: str, running: str) -> str | None:
    """Why an extension built against torch ``built`` cannot run under ``running``; None if it can."""
    if built == running:
        return None
    return (
        f"slsam's C++ extension was built against torch {built}, but torch {running} is installed; "
        f"the extension only works with the torch it was built against. Rebuild slsam against the "
        f"installed torch: {REBUILD}"
    )


def check_torch_version() -> None:
    """Raise ImportError unless slsam._C was built against the running torch."""
    try:
        from slsam._build_info import TORCH_VERSION
    except ModuleNotFoundError as e:
        if e.name != "slsam._build_info":
            raise
        raise ImportError(
            "slsam's C++ extension is not built (no slsam/_build_info.py, which the build writes "
            f"beside slsam._C): build it against the installed torch {torch.__version__}: {REBUILD}"
        ) from None
    message = mismatch_message(TORCH_VERSION, str(torch.__version__))
    if message is not None:
        raise ImportError(message)
