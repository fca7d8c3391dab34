/* The two costly steps of FFCV's crop decoders, done with less work (resnext_dist/data/crop_decode.py).
 *
 * resnext_decode_crop: FFCV 1.0.2 decodes every stored JPEG whole, then resizes the random crop out of
 * it; a random-resized crop covers about half the image on average. libjpeg-turbo can do less:
 * jpeg_crop_scanline limits the IDCT, upsampling and colour conversion to the crop's columns (widened to
 * whole iMCUs), and jpeg_skip_scanlines jumps over the rows above it (only their entropy-coded data is
 * read); rows below are never touched. Output pixels equal a full decode's, except that chroma
 * upsampling at a crop edge sees no neighbour beyond it.
 *
 * resnext_resize_area: OpenCV's INTER_AREA downscale (FFCV's resize), the same weights, computed as two
 * separable passes: rows first (contiguous, so the compiler vectorizes it), then columns a pixel at a
 * time as 4 floats. Equal to cv::resize's output within 1 level; 2.9x faster on the 2-core dev VM
 * (`python -m resnext_dist.bench loader`: ms_per_image_ffcv_area_resize vs ms_per_image_ffcv_resize).
 *
 * Called through ctypes (from numba-compiled code), so it is a plain C function; the Python module
 * wrapper at the end exists only so that setuptools builds and installs the library like an extension
 * (abi3: the same file loads in any CPython 3).
 */
#define Py_LIMITED_API 0x03080000
#include <Python.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* ---- area resize --------------------------------------------------------------------------------- */

typedef float v4 __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

/* Per thread (FFCV's decoding threads call in concurrently), grown as needed, kept for the next image. */
static __thread float *scratch;
static __thread size_t scratch_floats;

static float *scratch_for(size_t floats) {
    if (floats > scratch_floats) {
        float *grown = realloc(scratch, floats * sizeof(float));
        if (!grown) return NULL;
        scratch = grown;
        scratch_floats = floats;
    }
    return scratch;
}

/* INTER_AREA's weights for src -> dst samples (dst <= src), as OpenCV's computeResizeAreaTab makes them:
 * output d averages the input interval [d*scale, (d+1)*scale), scale = src/dst, each input sample weighted
 * by its overlap. Every output gets `taps` weights (zero-padded) starting at input first[d]; a window that
 * would run past the end is moved back (its weights shifted along). */
static int area_weights(int src, int dst, int taps, int *first, float *weight) {
    double scale = (double)src / dst;
    memset(weight, 0, sizeof(float) * (size_t)dst * taps);
    for (int d = 0; d < dst; d++) {
        double f1 = d * scale, f2 = f1 + scale, cell = fmin(scale, src - f1);
        int s1 = (int)ceil(f1), s2 = (int)floor(f2);
        if (s2 > src - 1) s2 = src - 1;
        if (s1 > s2) s1 = s2;
        int start = s1 - f1 > 1e-3 ? s1 - 1 : s1;
        int end = f2 - s2 > 1e-3 ? s2 + 1 : s2; /* one past the last input used */
        int shift = start + taps > src ? start + taps - src : 0;
        float *w = weight + (size_t)d * taps + shift;
        int k = 0;
        if (s1 - f1 > 1e-3) w[k++] = (float)((s1 - f1) / cell);
        for (int s = s1; s < s2; s++) w[k++] = (float)(1.0 / cell);
        if (end > s2) w[k++] = (float)(fmin(fmin(f2 - s2, 1.0), cell) / cell);
        first[d] = start - shift;
        if (first[d] < 0 || first[d] + taps > src) return -1; /* a window outside the inputs: never read it */
    }
    return 0;
}

/* Most inputs one output's window can touch: ceil(scale) + 1, and never more than there are inputs, so a
 * window moved back from the end never starts before input 0 (a 1-pixel-wide source with 2 taps read the
 * float before the buffer: weighted 0, but 0 x NaN is NaN). */
static int area_taps(int src, int dst) {
    int taps = (src + dst - 1) / dst + 1;
    return taps < src ? taps : src;
}

/* Resize the h x w RGB pixels at src (row stride src_stride bytes) down to out_h x out_w at dst
 * (contiguous), as cv::resize(..., INTER_AREA) does. Needs h >= out_h and w >= out_w (FFCV's OpenCV call
 * handles enlarging). Returns 0, -1 without memory, -2 for sizes it does not handle. */
int resnext_resize_area(const uint8_t *src, uint64_t src_stride, uint32_t h, uint32_t w, uint8_t *dst,
                        uint32_t out_h, uint32_t out_w) {
    if (out_h == 0 || out_w == 0 || h < out_h || w < out_w || src_stride < 3ull * w) return -2;
    int ty = area_taps(h, out_h), tx = area_taps(w, out_w);
    size_t row = (size_t)w * 3;
    /* one row of column sums (+1 float: the 4th lane read with the last pixel), then the weight tables */
    size_t need = row + 1 + (size_t)out_h * ty + (size_t)out_w * tx + out_h + out_w;
    float *acc = scratch_for(need);
    if (!acc) return -1;
    float *wy = acc + row + 1, *wx = wy + (size_t)out_h * ty;
    int *first_y = (int *)(wx + (size_t)out_w * tx), *first_x = first_y + out_h;
    if (area_weights(h, out_h, ty, first_y, wy) || area_weights(w, out_w, tx, first_x, wx)) return -2;
    acc[row] = 0.f;
    for (uint32_t oy = 0; oy < out_h; oy++) {
        /* rows: acc = the weighted sum of this output row's input rows, every channel of every column */
        const float *wr = wy + (size_t)oy * ty;
        const uint8_t *in = src + (size_t)first_y[oy] * src_stride;
        for (size_t i = 0; i < row; i++) acc[i] = wr[0] * in[i];
        for (int k = 1; k < ty; k++) {
            const uint8_t *in_k = in + (size_t)k * src_stride;
            float wk = wr[k];
            if (wk != 0.f)
                for (size_t i = 0; i < row; i++) acc[i] += wk * in_k[i];
        }
        /* columns: each output pixel from its input pixels' (r, g, b, next r) as one vector */
        uint8_t *out = dst + (size_t)oy * out_w * 3;
        for (uint32_t ox = 0; ox < out_w; ox++) {
            const float *wc = wx + (size_t)ox * tx, *a = acc + 3 * (size_t)first_x[ox];
            v4 p, sum = {0.f, 0.f, 0.f, 0.f};
            for (int k = 0; k < tx; k++) {
                memcpy(&p, a + 3 * k, sizeof p);
                sum += p * wc[k];
            }
            /* weights sum to 1, so 0 <= sum <= 255 (+ rounding error): round, no clamp needed */
            v4i v = __builtin_convertvector(sum + 0.5f, v4i);
            out[3 * ox] = (uint8_t)v[0];
            out[3 * ox + 1] = (uint8_t)v[1];
            out[3 * ox + 2] = (uint8_t)v[2];
        }
    }
    return 0;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cropdecode",
                                    "resnext_decode_crop and resnext_resize_area, loaded through ctypes", -1, NULL};

PyMODINIT_FUNC PyInit__cropdecode(void) { return PyModule_Create(&module); }
