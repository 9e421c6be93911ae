"""Frame storage: the contract, its Zarr implementation, and the spec workers get."""

from .base import Collectable, FrameStore, StoredLocation, validate_location
from .spec import STORE_KINDS, StoreSpec
from .zarr_store import ZarrFrameStore

__all__ = ["STORE_KINDS", "Collectable", "FrameStore", "StoreSpec", "StoredLocation",
           "ZarrFrameStore", "validate_location"]
