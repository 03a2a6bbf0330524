"""Only the optional C extension lives here; everything else is in pyproject.toml.

``softguard._hotpath`` compiles the relay's two commonest chunks (decision 0034) and a
session's socket reads and writes (``_link.c``, decision 0040).
It is optional: without a C compiler or Python's headers the build skips it and the pure
Python fast path runs instead (softguard/speedups.py says which one is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "softguard._hotpath",
            ["softguard/_hotpath.c", "softguard/_link.c"],
            depends=["softguard/_link.h"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
