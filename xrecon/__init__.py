"""xrecon: gap-free satellite image time series from cloudy optical and SAR datacubes.

Importing xrecon registers the ``Dataset.recon`` accessor.
"""

from xrecon._version import __version__
from xrecon.errors import XreconError

__all__ = ["XreconError", "__version__"]
