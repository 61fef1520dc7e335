"""The public nogil Cython API (rnncore/_kernels.pxd): an outside extension, built here at test time
with Cython and setuptools in a temporary directory, cimports rnncore, runs an LSTM and a GRU step by
step in a nogil loop on its own buffers, and must match rnncore.LSTM / rnncore.GRU bit for bit."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnncore

EXTENSION = textwrap.dedent('''
    # cython: language_level=3, boundscheck=False, wraparound=False
    import numpy as np
    from libc.string cimport memcpy
    from rnncore._kernels cimport Cell, rc_step_f, rc_step_d, rc_step_workspace

    ctypedef fused real:
        float
        double

    def run(Cell cell, const real[:, :, ::1] x, real[:, ::1] h, c):
        """Steps the cell over x (T, B, I) from h (B, P) and c (B, H, LSTM) or None, updating them
        in place; returns every step's output (T, B, P)."""
        cdef Py_ssize_t T = x.shape[0], B = x.shape[1], P = h.shape[1], t
        dt = np.float32 if real is float else np.float64
        out = np.empty((T, B, P), dt)
        cdef real[:, :, ::1] o = out
        cdef real[::1] work = np.empty(rc_step_workspace(&cell.c, B), dt)
        cdef real[:, ::1] cv
        cdef real* pc = NULL
        if c is not None:
            cv = c
            pc = &cv[0, 0]
        with nogil:
            for t in range(T):
                if real is float:
                    rc_step_f(&cell.c, B, &x[t, 0, 0], &h[0, 0], pc, &h[0, 0], pc, &work[0])
                else:
                    rc_step_d(&cell.c, B, &x[t, 0, 0], &h[0, 0], pc, &h[0, 0], pc, &work[0])
                memcpy(&o[t, 0, 0], &h[0, 0], B * P * sizeof(real))
        return out
''')

SETUP = textwrap.dedent('''
    import rnncore
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    ext = Extension("rc_embed", ["rc_embed.pyx"], include_dirs=[rnncore.get_include()])
    setup(ext_modules=cythonize([ext], include_path=[rnncore.get_include()], quiet=True))
''')


@pytest.fixture(scope="module")
def embed(tmp_path_factory):
    d = tmp_path_factory.mktemp("outside_extension")
    (d / "rc_embed.pyx").write_text(EXTENSION)
    (d / "setup.py").write_text(SETUP)
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=d,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"building the outside extension failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    so = next(p for p in os.listdir(d) if p.startswith("rc_embed") and p.endswith((".so", ".pyd")))
    spec = importlib.util.spec_from_file_location("rc_embed", d / so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CASES = {
    "lstm": lambda dt: rnncore.LSTM(6, 33, dtype=dt, seed=4),
    "lstm_proj_peephole": lambda dt: rnncore.LSTM(6, 20, proj_size=7, peephole=True, dtype=dt, seed=4),
    "gru": lambda dt: rnncore.GRU(6, 32, dtype=dt, seed=4),
    "gru_reset_before": lambda dt: rnncore.GRU(6, 17, reset_after=False, dtype=dt, seed=4),
    "rnn_relu": lambda dt: rnncore.RNN(6, 16, nonlinearity="relu", dtype=dt, seed=4),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("B", [1, 5, 19])
@pytest.mark.parametrize("case", CASES)
def test_outside_nogil_loop_matches_the_layer(embed, case, B, dtype):
    rng = np.random.default_rng(B)
    layer = CASES[case](dtype)
    T = 7
    x = rng.standard_normal((T, B, 6)).astype(dtype)
    h = (rng.standard_normal((B, layer._P)) * 0.5).astype(dtype)
    lstm = isinstance(layer, rnncore.LSTM)
    c = rng.standard_normal((B, layer.hidden_size)).astype(dtype) if lstm else None
    hx = (h[None].copy(), c[None].copy()) if lstm else h[None].copy()
    want, want_state = layer(x, hx)
    got = embed.run(layer.cell(), x, h, c)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(h, want_state[0][0] if lstm else want_state[0])
    if lstm:
        np.testing.assert_array_equal(c, want_state[1][0])


def test_outside_call_checks_the_cell_type(embed):
    with pytest.raises(TypeError):
        embed.run(object(), np.zeros((1, 1, 6), np.float32), np.zeros((1, 33), np.float32), None)
