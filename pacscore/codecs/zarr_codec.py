"""A Zarr v3 array-to-bytes codec whose chunks are DICOM frame codestreams.

Registered under the name ``pacscore.dicom_frame`` through the ``zarr.codecs``
entry point, so plain ``zarr.open(path)`` returns decoded pixels of any frame array
pacscore wrote, while each stored chunk stays exactly the codestream of one DICOM
fragment (retrieval in the stored syntax is a file read, not a transcode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import JSON, parse_named_configuration

from ..dicom.layout import PixelLayout

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

__all__ = ["CODEC_NAME", "DicomFrameCodec"]

CODEC_NAME = "pacscore.dicom_frame"


@dataclass(frozen=True)
class DicomFrameCodec(ArrayBytesCodec):
    """One chunk = one frame = one codestream of ``transfer_syntax``."""

    is_fixed_size = False

    transfer_syntax: str
    bits_stored: int
    photometric: str

    def __init__(self, *, transfer_syntax: str, bits_stored: int, photometric: str) -> None:
        object.__setattr__(self, "transfer_syntax", transfer_syntax)
        object.__setattr__(self, "bits_stored", int(bits_stored))
        object.__setattr__(self, "photometric", photometric)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, CODEC_NAME)
        return cls(**config)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {
            "name": CODEC_NAME,
            "configuration": {
                "transfer_syntax": self.transfer_syntax,
                "bits_stored": self.bits_stored,
                "photometric": self.photometric,
            },
        }

    def _layout(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> PixelLayout:
        samples = shape[3] if len(shape) == 4 else 1
        return PixelLayout(shape[1], shape[2], samples, dtype.itemsize * 8, self.bits_stored,
                           dtype.kind == "i", False, self.photometric, 1)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        from . import by_syntax

        codec = by_syntax(self.transfer_syntax)
        if codec is None:
            raise ValueError(f"no decoder for transfer syntax {self.transfer_syntax}")
        dtype = chunk_spec.dtype.to_native_dtype()
        layout = self._layout(chunk_spec.shape, dtype)
        frame = codec.decode(chunk_bytes.to_bytes(), layout)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(
            frame.reshape(chunk_spec.shape)  # type: ignore[arg-type]
        )

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        from . import by_syntax

        codec = by_syntax(self.transfer_syntax)
        if codec is None:
            raise ValueError(f"no encoder for transfer syntax {self.transfer_syntax}")
        arr = np.ascontiguousarray(chunk_array.as_numpy_array())
        layout = self._layout(arr.shape, arr.dtype)
        data = codec.encode(arr.reshape(layout.frame_shape), layout)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("codestream sizes are data dependent")
