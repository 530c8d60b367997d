"""The package version: read by pyproject.toml (``[tool.setuptools.dynamic]``) and ``slsam.__version__``."""

__version__ = "0.1.0"
