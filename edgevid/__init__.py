"""edgevid: Gemma 4 video understanding on edge machines.

The runtime package never imports torch or transformers.
"""
__version__ = "0.1.0"

from edgevid.errors import EdgevidError  # noqa: F401
