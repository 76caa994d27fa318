"""The version the code records in manifests and result files (`code_version`)."""

__version__ = "0.1.0"
