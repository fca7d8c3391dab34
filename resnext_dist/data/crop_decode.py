"""FFCV image decoders that decode only the crop (data.crop_decode=true, the default).

FFCV 1.0.2's RandomResizedCrop and CenterCrop decoders decode each stored JPEG whole and then resize the
crop out of it. These subclasses pick the crop first and ask libjpeg for just those rows and columns
(resnext_dist/data/_jpegcrop.c), then resize with FFCV's own OpenCV INTER_AREA call. Crops, random draws,
resizing and raw-stored images are FFCV's; only the JPEG decode is narrowed. Pixels equal a full decode's
except along a crop's edges, where chroma upsampling sees no neighbour beyond the crop (a few levels).
On 350x467 photos at 176 px, one thread: ~1.2x the images/s (`python -m resnext_dist.bench loader`
times both).

The library is built by `pip install -e .` (setup.py; needs a C compiler and libjpeg's headers). Where it
is missing, `available()` is False and the FFCV loaders use FFCV's decoders. Should libjpeg fail on an
image, that image is decoded whole by FFCV's decoder instead, so a file FFCV reads is read the same.
"""
from __future__ import annotations

import ctypes
import importlib.util
from functools import lru_cache
from typing import Callable, Optional

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.compiler import Compiler


@lru_cache(maxsize=None)
def _library() -> Optional[ctypes.CDLL]:
    spec = importlib.util.find_spec("resnext_dist.data._jpegcrop")
    if spec is None or not spec.origin:
        return None
    lib = ctypes.CDLL(spec.origin)
    lib.resnext_decode_crop.restype = ctypes.c_int
    lib.resnext_decode_crop.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32,
                                        ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint64,
                                        ctypes.c_int]
    return lib


def available() -> bool:
    """Whether the compiled partial decoder is installed (setup.py builds it where libjpeg-dev is)."""
    return _library() is not None


def decode_crop(data: np.ndarray, out: np.ndarray, top, left, height, width, out_stride) -> int:
    """Decode rows [top, top+height), columns from <= left to >= left+width, of the JPEG bytes `data` into
    `out` (row stride `out_stride` bytes). Returns the first decoded column, < 0 on failure. Plain enough
    for numba to compile (FFCV compiles its own libffcv wrappers the same way)."""
    return _DECODE(data.ctypes.data, data.size, top, left, height, width, out.ctypes.data, out_stride, 1)


_DECODE: Callable = _library().resnext_decode_crop if available() else None


class _CropFirst:
    """generate_code for ResizedCropRGBImageDecoder subclasses: crop, decode the crop, resize."""

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        decode_crop_c = Compiler.compile(decode_crop)
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        get_crop_c = Compiler.compile(self.get_crop_generator)
        scale = np.array(self.scale) if isinstance(self.scale, tuple) else self.scale
        ratio = np.array(self.ratio) if isinstance(self.ratio, tuple) else self.ratio

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field['data_ptr'], storage_state)
                height = np.uint32(field['height'])
                width = np.uint32(field['width'])
                i, j, h, w = get_crop_c(height, width, scale, ratio)
                if field['mode'] == jpg:
                    temp_buffer = temp_storage[dst_ix]
                    # rows of the image's full width: the decoded columns start at x0 <= j
                    x0 = decode_crop_c(image_data, temp_buffer, i, j, h, w, 3 * width)
                    if x0 >= 0:
                        rows = temp_buffer.reshape(-1)[:3 * h * width].reshape(h, width, 3)
                        resize_crop_c(rows, 0, h, j - x0, j - x0 + w, destination[dst_ix])
                        continue
                    # libjpeg refused the partial decode: FFCV's whole-image decode, as its own decoder does
                    imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                    image = temp_buffer.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                resize_crop_c(image, i, i + h, j, j + w, destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class CropFirstRandomResizedCrop(_CropFirst, RandomResizedCropRGBImageDecoder):
    """RandomResizedCropRGBImageDecoder (same arguments) that decodes only the crop."""


class CropFirstCenterCrop(_CropFirst, CenterCropRGBImageDecoder):
    """CenterCropRGBImageDecoder (same arguments) that decodes only the crop."""

