"""Frame storage: the contract, its Zarr implementation, and the spec workers get."""

from .base import (
    Collectable,
    FrameStore,
    StoredLocation,
    location_age,
    new_location,
    validate_location,
)
from .spec import STORE_KINDS, StoreSpec
from .zarr_store import ZarrFrameStore

__all__ = ["STORE_KINDS", "Collectable", "FrameStore", "StoreSpec", "StoredLocation",
           "ZarrFrameStore", "location_age", "new_location", "validate_location"]
