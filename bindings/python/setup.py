"""Records where libthinstack.so.0 is, at build time, in thinstack/_libpath.py,
so an installed package finds the library without any variable set. The
path comes from $THINSTACK_LIBRARY, else pkg-config's libdir for thinstack;
with neither, nothing is recorded and the package looks at import time.
Everything else is in pyproject.toml."""
import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

SONAME = "libthinstack.so.0"


def library_at_build():
    lib = os.environ.get("THINSTACK_LIBRARY")
    if lib:
        return os.path.abspath(lib)
    try:
        r = subprocess.run(["pkg-config", "--variable=libdir", "thinstack"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    libdir = r.stdout.strip()
    if r.returncode == 0 and libdir and os.path.exists(os.path.join(libdir, SONAME)):
        return os.path.normpath(os.path.join(libdir, SONAME))
    return None


class BuildPyRecordingLibrary(build_py):
    def run(self):
        super().run()
        lib = library_at_build()
        if lib and not self.dry_run:
            target = os.path.join(self.build_lib, "thinstack", "_libpath.py")
            with open(target, "w") as f:
                f.write("# Written when the package was built: where libthinstack was.\n")
                f.write("LIBRARY = %r\n" % lib)
            print("thinstack: recorded the library at %s" % lib)


setup(cmdclass={"build_py": BuildPyRecordingLibrary})
