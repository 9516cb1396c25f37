"""The kernel table of src/backend/cuda/kernels.rs: every kernel the Rust host launches, with
its parameter types in order. build.sh exports a launcher for each, and the drivers call them
with exactly these ctypes, so an argument the Rust side declares differently fails here too."""
import ctypes as C, os, re

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
CTYPE = {'Ptr': C.c_void_p, 'i32': C.c_int, 'i64': C.c_longlong, 'f32': C.c_float}


def table():
    src = open(os.path.join(ROOT, 'src', 'backend', 'cuda', 'kernels.rs')).read()
    body = src[src.index('kernels! {'):]
    body = body[:body.index('\n}\n')]
    body = re.sub(r'//[^\n]*', '', body)
    out = {}
    for name, params in re.findall(r'(\w+)\s*\(([^;]*?)\)\s*;', body):
        out[name] = [p.split(':')[1].strip() for p in params.split(',') if p.strip()]
    return out


if __name__ == '__main__':
    for name, types in table().items():
        print(f'DELO_EMU_EXPORT({name}, {", ".join("emu_k::" + t for t in types)})')
