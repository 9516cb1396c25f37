// A C entry point per kernel of the Rust kernel table, for the Python drivers:
// wp_<kernel> points at run(grid xyz, block xyz, dynamic shared bytes, the kernel's arguments).
// The kernel's parameter types must be those kernels.rs declares (Ptr any pointer, i32 int,
// i64 long long, f32 float), or this does not compile: ctypes passes exactly those.
#pragma once
#include <type_traits>
namespace emu_k {
struct Ptr;
using i32 = int;
using i64 = long long;
using f32 = float;
template <class Want, class Got> constexpr bool arg_ok = std::is_same_v<Want, Got>;
template <class Got> constexpr bool arg_ok<Ptr, Got> = std::is_pointer_v<Got>;
template <class... Want> struct Decl {};
template <auto K, class D> struct Wrap;
template <class... A, void (*K)(A...), class... Want> struct Wrap<K, Decl<Want...>> {
    static_assert(sizeof...(A) == sizeof...(Want), "kernels.rs declares another parameter count");
    static_assert((arg_ok<Want, A> && ...), "kernels.rs declares another parameter type");
    static void run(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                    unsigned smem, A... a) {
        g_dyn_bytes = smem;
        emu_launch(dim3e{gx, gy, gz}, dim3e{bx, by, bz}, [&] { K(a...); });
    }
};
}  // namespace emu_k
#define DELO_EMU_EXPORT(name, ...)                                              \
    extern "C" {                                                                \
    void* wp_##name = (void*)&emu_k::Wrap<name, emu_k::Decl<__VA_ARGS__>>::run; \
    }
