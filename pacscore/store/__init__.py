"""Frame storage: the contract and its Zarr implementation."""

from .base import FrameStore, validate_location
from .zarr_store import ZarrFrameStore

__all__ = ["FrameStore", "ZarrFrameStore", "validate_location"]
