"""Only the compiled part of the package; everything else is in setup.cfg.

resnext_dist.data._cropdecode (partial JPEG decoding and INTER_AREA shrinking for FFCV, see
resnext_dist/data/_cropdecode.c) needs a C compiler and libjpeg's headers (Debian: libjpeg-dev). It is
optional: without it the package installs, and FFCV training uses FFCV's own decoders.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("resnext_dist.data._cropdecode", ["resnext_dist/data/_cropdecode.c"],
                             libraries=["jpeg", "m"], extra_compile_args=["-O3"], py_limited_api=True,
                             optional=True)],
      options={"bdist_wheel": {"py_limited_api": "cp38"}})
