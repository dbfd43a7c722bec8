"""Build hooks: generate the protocol descriptor (gpushare/v1/gpushare.desc) at build time.

Everything else about the package is in pyproject.toml. See gpushare/_protogen.py for what is
generated and why it does not depend on the grpcio/protobuf versions installed at run time.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gpushare"))
import _protogen  # noqa: E402  (gpushare/_protogen.py, without importing the package)


def _generate(v1_dir):
    """Generates into v1_dir from ../../proto; without it (an sdist), keeps the descriptor that
    the sdist carries."""
    if _protogen.find_proto_root(HERE) is not None:
        for path in _protogen.generate(HERE, v1_dir):
            print(f"gpushare: generated {path}")
        return
    shipped = os.path.join(HERE, "gpushare", "v1", _protogen.DESCRIPTOR)
    if not os.path.exists(shipped):
        raise RuntimeError(
            "gpushare: neither ../../proto/gpushare/v1/gpushare.proto nor a generated "
            f"{shipped}: build from the repository (pip install ./client/python)"
        )
    with open(shipped, "rb") as f:
        _protogen.write_generated(v1_dir, f.read())


class BuildPy(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # Editable install: the package is imported from the source tree.
            _generate(os.path.join(HERE, "gpushare", "v1"))
        else:
            _generate(os.path.join(self.build_lib, "gpushare", "v1"))


class Sdist(sdist):
    def run(self):
        _generate(os.path.join(HERE, "gpushare", "v1"))
        super().run()


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
