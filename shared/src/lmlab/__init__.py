"""lmlab: the thin library shared by the five lmlab method packages."""

from lmlab.errors import LmlabError

__version__ = "0.1.0"
__all__ = ["LmlabError", "__version__"]
