"""Only the compiled part of the package; everything else is in setup.cfg.

resnext_dist.data._jpegcrop (partial JPEG decoding for FFCV, see resnext_dist/data/_jpegcrop.c) needs a C
compiler and libjpeg's headers (Debian: libjpeg-dev). It is optional: without it the package installs,
and FFCV training decodes whole images as FFCV itself does.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("resnext_dist.data._jpegcrop", ["resnext_dist/data/_jpegcrop.c"], libraries=["jpeg"],
                             extra_compile_args=["-O2"], py_limited_api=True, optional=True)],
      options={"bdist_wheel": {"py_limited_api": "cp38"}})
