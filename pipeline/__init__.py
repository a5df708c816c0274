"""influence-pipeline: hypergradients of validation error w.r.t. every training sample, computed on Ray."""

from importlib import metadata

try:
    __version__ = metadata.version("influence-pipeline")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
