"""FFCV image decoders that decode only the crop (data.crop_decode=true, the default).

FFCV 1.0.2's RandomResizedCrop and CenterCrop decoders decode each stored JPEG whole and then resize the
crop out of it with OpenCV's INTER_AREA. These subclasses pick the crop first, ask libjpeg for just those
rows and columns, and shrink it with our own INTER_AREA (both in resnext_dist/data/_cropdecode.c);
enlarging (a crop smaller than the output) stays with FFCV's OpenCV call. Crops, random draws and
raw-stored images are FFCV's. Pixels equal FFCV's within 1 level, except along a crop's edges, where
chroma upsampling sees no neighbour beyond the crop (a few levels). `python -m resnext_dist.bench loader`
times both (`ffcv` and `ffcv-full`) and prints each step's cost per image.

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
from resnext_dist.data import ffcv_cache  # noqa: F401  before FFCV: numba's compile from its disk cache
from ffcv.fields.rgb_image import IMAGE_MODES, CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.compiler import Compiler


@lru_cache(maxsize=None)
def _library() -> Optional[ctypes.CDLL]:
    spec = importlib.util.find_spec("resnext_dist.data._cropdecode")
    if spec is None or not spec.origin:
        return None
    lib = ctypes.CDLL(spec.origin)
    lib.resnext_decode_crop.restype = ctypes.c_int
    lib.resnext_decode_crop.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32,
                                        ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint64,
                                        ctypes.c_int]
    lib.resnext_resize_area.restype = ctypes.c_int
    lib.resnext_resize_area.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32,
                                        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
    return lib


def available() -> bool:
    """Whether the compiled partial decoder is installed (setup.py builds it where libjpeg-dev is)."""
    return _library() is not None


def decode_crop(data: np.ndarray, out: np.ndarray, top, left, height, width, out_stride) -> int:
    """Decode rows [top, top+height), columns from <= left to >= left+width, of the JPEG bytes `data` into
    `out` (row stride `out_stride` bytes). Returns the first decoded column, < 0 on failure. Plain enough
    for numba to compile (FFCV compiles its own libffcv wrappers the same way)."""
    return _DECODE(data.ctypes.data, data.size, top, left, height, width, out.ctypes.data, out_stride, 1)


def resize_area(image: np.ndarray, top, left, height, width, out: np.ndarray) -> int:
    """Shrink image[top:top+height, left:left+width] (an RGB uint8 array with contiguous rows) into `out`
    (contiguous, out.shape[:2] <= (height, width)) with OpenCV's INTER_AREA weights. 0 on success, < 0 for
    sizes it does not handle (enlarging)."""
    row = image.shape[1] * 3
    # the offset as uint64, like the address: mixing signed and unsigned would go through float64 in numba
    return _RESIZE(int(image.ctypes.data + np.uint64(top * row + left * 3)), row, height, width, out.ctypes.data,
                   out.shape[0], out.shape[1])


_DECODE: Callable = _library().resnext_decode_crop if available() else None
_RESIZE: Callable = _library().resnext_resize_area if available() else None


class _CropFirst:
    """generate_code for ResizedCropRGBImageDecoder subclasses: crop, decode the crop, resize."""

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        decode_crop_c = Compiler.compile(decode_crop)
        imdecode_c = Compiler.compile(imdecode)
        resize_area_c = Compiler.compile(resize_area)
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
                    # rows of the image's full width; the decoded columns start at x0 <= j
                    x0 = decode_crop_c(image_data, temp_buffer, i, j, h, w, 3 * width)
                    if x0 >= 0:
                        rows = temp_buffer.reshape(-1)[:3 * h * width].reshape(h, width, 3)
                        # ours shrinks; enlarging (a crop smaller than the output) is OpenCV's
                        if resize_area_c(rows, 0, j - x0, h, w, destination[dst_ix]) != 0:
                            resize_crop_c(rows, 0, h, j - x0, j - x0 + w, destination[dst_ix])
                        continue
                    # libjpeg refused the partial decode: FFCV's whole-image decode, as its own decoder does
                    imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                    image = temp_buffer.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                if resize_area_c(image, i, j, h, w, destination[dst_ix]) != 0:
                    resize_crop_c(image, i, i + h, j, j + w, destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class CropFirstRandomResizedCrop(_CropFirst, RandomResizedCropRGBImageDecoder):
    """RandomResizedCropRGBImageDecoder (same arguments) that decodes only the crop."""


class CropFirstCenterCrop(_CropFirst, CenterCropRGBImageDecoder):
    """CenterCropRGBImageDecoder (same arguments) that decodes only the crop."""
