"""Launching emulated kernels from Python, and the launch helpers of the Rust host
(src/backend/cuda/kernels.rs, ops.rs) they mirror. `K.<kernel>(cfg, *args)` calls the kernel of
that name with the ctypes its kernels.rs declaration gives; numpy arrays pass as pointers to
their first element (a slice `a[off:]` is the host's `at(p, off)`)."""
import ctypes as C, os
import numpy as np
from kernel_table import table, CTYPE

lib = C.CDLL(os.path.join(os.environ.get('EMU_OUT', '/tmp/delo-kernel-emu'), 'libemu.so'))


class _Kernels:
    def __init__(self):
        self._t = table()

    def __getattr__(self, name):
        types = [CTYPE[t] for t in self._t[name]]
        fn = C.CFUNCTYPE(None, *[C.c_uint] * 7, *types)(C.c_void_p.in_dll(lib, 'wp_' + name).value)

        def launch(cfg, *args):
            (gx, gy, gz), (bx, by, bz), smem = cfg
            assert len(args) == len(types), (name, len(args), len(types))
            conv = []
            for a, t in zip(args, types):
                if t is C.c_void_p:
                    assert isinstance(a, np.ndarray) and a.flags.c_contiguous, (name, type(a))
                    conv.append(C.c_void_p(a.ctypes.data))
                else:
                    assert not isinstance(a, np.ndarray), name
                    conv.append(a)
            fn(gx, gy, gz, bx, by, bz, smem, *conv)
        setattr(self, name, launch)
        return launch


K = _Kernels()
# EMU_SMALL=1 (the ThreadSanitizer run, ~50x slower) keeps only cases of few elements.
SMALL = os.environ.get('EMU_SMALL') == '1'


def keep(*cases):
    """The cases (tuples of sizes, or sizes) to run: all, or under EMU_SMALL those whose sizes
    multiply to at most 6000 elements."""
    return [c for c in cases if not SMALL or np.prod(c) <= 6000]
ERR = np.zeros(1, np.int32)  # the backend's device error word

# ---- kernels.rs / ops.rs launch helpers ----
BLOCK = 256
ROWS_PER_BLOCK = 8
CFG_ONE_BLOCK = ((1, 1, 1), (1024, 1, 1), 0)


def cfg_flat(n):
    return ((min(max(-(-n // BLOCK), 1), 65535), 1, 1), (BLOCK, 1, 1), 0)


def cfg_rows(rows):
    return ((max(-(-rows // ROWS_PER_BLOCK), 1), 1, 1), (BLOCK, 1, 1), 0)


def cfg_colsum(d, nchunks):
    return ((-(-d // 32), nchunks, 1), (32, 8, 1), 0)


def colsum_chunks(rows, d):
    want = max(1024 // max(-(-d // 32), 1), 1)
    rpc = max(-(-rows // want), 32)
    return -(-rows // rpc), rpc


def empty(n, dt=np.float32):
    """`alloc_slice(n)`: at least one element; NaN (or a sentinel) so unwritten entries fail."""
    fill = {np.float32: np.nan, np.uint16: 0xFFFF, np.int32: -7}[dt]
    return np.full(max(n, 1), fill, dtype=dt)


def zeros(n):
    return np.zeros(max(n, 1), np.float32)


def f32(a):
    return np.ascontiguousarray(a, np.float32).reshape(-1)


# ---- checks ----
def close(what, got, want, atol_rel=2e-6, rtol=2e-5, atol=1e-7):
    """|got - want| <= atol_rel * max|want| + atol + rtol * |want|, elementwise; NaN must match."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    nan_w = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan_w), f"{what}: NaN where none is expected (unwritten?) or missing"
    got, want = got[~nan_w], want[~nan_w]
    sc = np.abs(want).max() if want.size else 0
    err = np.abs(got - want) - (atol_rel * sc + atol + rtol * np.abs(want))
    if err.size and err.max() > 0:
        i = int(np.argmax(err))
        raise AssertionError(f"{what}: element {i} got {got[i]!r} want {want[i]!r} (scale {sc})")


def exact(what, got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    same = (got == want) | (np.isnan(got) & np.isnan(want)) if got.dtype.kind == 'f' else got == want
    if not same.all():
        i = int(np.argmax(~same.reshape(-1)))
        raise AssertionError(f"{what}: element {i} got {got.reshape(-1)[i]!r} want {want.reshape(-1)[i]!r}")


def check_err(what, want=0):
    got = int(ERR[0])
    ERR[0] = 0
    assert got == want, f"{what}: device error word {got}, expected {want}"
