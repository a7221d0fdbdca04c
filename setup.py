"""Build the optional C DATA scanner; everything else is in setup.cfg.

The extension is optional: without a C compiler (or Python's headers) the build goes on without
it and relaygate uses the pure-Python scanner, which the same tests check (docs/performance.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("relaygate.smtp._scan", ["relaygate/smtp/_scan.c"], optional=True),
    ],
)
