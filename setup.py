"""Build rnncore's compiled core, rnncore._kernels.

OpenMP is used when the compiler has it (checked by compiling a tiny program, as scikit-learn's build
does); without it the build still succeeds, with a warning, and the kernels run on one thread.

Build options (environment variables):
  RNNCORE_PORTABLE=1   -march=x86-64-v3 (AVX2 and FMA) instead of -march=native, for binaries that
                       move to other CPUs; the same answers, bit for bit, as a native build
  RNNCORE_BOUNDSCHECK=1  compile the Cython kernels with bounds checks and wraparound on (debugging)
  RNNCORE_NO_OPENMP=1  build without OpenMP even if the compiler has it (as a compiler without it would)
"""
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _compiles(compiler, flags, link_flags=(), code="int main(void){return 0;}\n"):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=list(flags))
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=list(link_flags))
        except Exception:
            return False
    return True


OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
""")


class BuildExt(build_ext):
    def build_extensions(self):
        cc = self.compiler
        is_msvc = cc.compiler_type == "msvc"
        if is_msvc:
            compile_flags, link_flags, omp = ["/O2", "/openmp"], [], True
        else:
            # -O3; -fno-wrapv undoes Python's default -fwrapv (3.5x slower index loops);
            # no -ffast-math: at link time it would set flush-to-zero for the whole process.
            compile_flags = ["-O3", "-fno-wrapv", "-fno-math-errno", "-fno-trapping-math"]
            link_flags = ["-lm"]
            if os.environ.get("RNNCORE_PORTABLE", "0") in ("", "0") and _compiles(cc, ["-march=native"]):
                compile_flags += ["-march=native"]
                if _compiles(cc, ["-march=native", "-mprefer-vector-width=512"]):
                    compile_flags += ["-mprefer-vector-width=512"]
            elif _compiles(cc, ["-march=x86-64-v3"]):
                # portable: any x86-64 CPU with AVX2 and FMA (2013 on). Fused multiply-adds on every
                # path the build can take keep every path's answers the same, bit for bit
                compile_flags += ["-march=x86-64-v3"]
            omp = (os.environ.get("RNNCORE_NO_OPENMP", "0") in ("", "0")
                   and _compiles(cc, ["-fopenmp"], ["-fopenmp"], OPENMP_PROBE))
            if omp:
                compile_flags.append("-fopenmp")
                link_flags.append("-fopenmp")
        if not omp:
            warnings.warn(
                "\n*** rnncore: this compiler does not support OpenMP; building the kernels "
                "without it. They will run on a single thread. ***\n", stacklevel=1)
        for ext in self.extensions:
            ext.extra_compile_args = compile_flags + ext.extra_compile_args
            ext.extra_link_args = link_flags + ext.extra_link_args
        super().build_extensions()


def extensions():
    import numpy
    from Cython.Build import cythonize

    debug = os.environ.get("RNNCORE_BOUNDSCHECK", "0") not in ("", "0")
    ext = Extension(
        "rnncore._kernels",
        sources=["rnncore/_kernels.pyx"],
        include_dirs=["rnncore", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
        "nonecheck": False,
        "embedsignature": True,
    }
    return cythonize([ext], compiler_directives=directives, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
