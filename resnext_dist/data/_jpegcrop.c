/* Partial JPEG decoding for the FFCV training pipeline (resnext_dist/data/crop_decode.py).
 *
 * FFCV 1.0.2 decodes every stored JPEG whole, then resizes the random crop out of it; a random-resized
 * crop covers about half the image on average. libjpeg-turbo can do less: jpeg_crop_scanline limits the
 * IDCT, upsampling and colour conversion to the crop's columns (widened to whole iMCUs), and
 * jpeg_skip_scanlines jumps over the rows above it (only their entropy-coded data is read); rows below
 * are never touched. Output pixels equal a full decode's, except that chroma upsampling at a crop edge
 * sees no neighbour beyond it.
 *
 * Called through ctypes (from numba-compiled code), so it is a plain C function; the Python module
 * wrapper at the end exists only so that setuptools builds and installs the library like an extension
 * (abi3: the same file loads in any CPython 3).
 */
#define Py_LIMITED_API 0x03080000
#include <Python.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <jpeglib.h>

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
};

/* libjpeg's default is to print and exit(); return to decode_crop instead. */
static void on_error(j_common_ptr cinfo) { longjmp(((struct error_manager *)cinfo->err)->jump, 1); }

/* Warnings (e.g. a truncated file, decoded as far as it goes) are not printed from worker threads. */
static void on_message(j_common_ptr cinfo) { (void)cinfo; }

/* Decode rows [top, top + height) and at least columns [left, left + width) of the JPEG in data[0:size]
 * as RGB into out, one row per out_stride bytes (out holds height * out_stride bytes; out_stride is at
 * least 3 x the image's width). fast_dct selects libjpeg's fast integer IDCT, as FFCV's own decoder does.
 * Returns the first decoded column (left rounded down to an iMCU boundary; the crop starts left - that
 * many pixels into each row), -1 when libjpeg fails, -2 when the crop lies outside the image. */
int resnext_decode_crop(const unsigned char *data, uint64_t size, uint32_t top, uint32_t left,
                        uint32_t height, uint32_t width, unsigned char *out, uint64_t out_stride,
                        int fast_dct) {
    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    volatile int result = -1;

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.output_message = on_message;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return result;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    if (width == 0 || height == 0 || (uint64_t)left + width > cinfo.image_width ||
        (uint64_t)top + height > cinfo.image_height || out_stride < 3ull * cinfo.image_width) {
        jpeg_destroy_decompress(&cinfo);
        return -2;
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.dct_method = fast_dct ? JDCT_IFAST : JDCT_ISLOW;
    jpeg_start_decompress(&cinfo);
    JDIMENSION x = left, w = width;
    jpeg_crop_scanline(&cinfo, &x, &w);
    if (top > 0 && jpeg_skip_scanlines(&cinfo, top) != top) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    for (uint32_t row = 0; row < height; row++) {
        JSAMPROW dest = out + (uint64_t)row * out_stride;
        if (jpeg_read_scanlines(&cinfo, &dest, 1) != 1) {
            jpeg_destroy_decompress(&cinfo);
            return -1;
        }
    }
    result = (int)x;
    jpeg_abort_decompress(&cinfo); /* the rows below the crop are not needed */
    jpeg_destroy_decompress(&cinfo);
    return result;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop",
                                    "resnext_decode_crop, loaded through ctypes", -1, NULL};

PyMODINIT_FUNC PyInit__jpegcrop(void) { return PyModule_Create(&module); }
