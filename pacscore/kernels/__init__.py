"""numba kernels for the glue between files and codecs, each with a numpy twin.

The twins define the semantics; ``tests/test_kernels.py`` checks every kernel against
its twin.  Kernels are compiled eagerly (explicit signatures) the first time this
package is imported, so worker processes never race to compile them.
"""

from .bits import (
    bits_outside_stored,
    bits_outside_stored_numpy,
    mask_to_bits,
    mask_to_bits_numpy,
    sign_extend,
    sign_extend_numpy,
)
from .window import lookup_uint8, lookup_uint8_numpy

__all__ = [
    "bits_outside_stored",
    "bits_outside_stored_numpy",
    "lookup_uint8",
    "lookup_uint8_numpy",
    "mask_to_bits",
    "mask_to_bits_numpy",
    "sign_extend",
    "sign_extend_numpy",
]
