// The emulated device's kernels: every `extern "C" __global__` function of kernels/*.cu,
// compiled as C++ (kernels.cpp) and registered by name with its parameter list, so that the
// driver (driver.cpp) can check the list against the PTX `.entry` of the same name and launch it.
#pragma once
#include <array>
#include <cstddef>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace emu {

struct Dims {
    unsigned gx, gy, gz, bx, by, bz;
};

// Runs `body` once for every thread of every block of `d` (fiber.cpp). `smem` bytes of dynamic
// shared memory per block. Returns false with `err` set when a block could not finish (a barrier
// that some threads of the block or warp never reach).
bool run_grid(const Dims& d, size_t smem, const std::function<void()>& body, std::string* err);

struct Param {
    const char* ptx_type;  // ".u64" (pointers, long long), ".u32" (int), ".f32" (float)
    size_t size;
    size_t offset;  // in the packed argument buffer
    bool is_pointer;
};

struct KernelInfo {
    std::string name;
    std::vector<Param> params;
    size_t args_bytes;
    // Runs the kernel on the packed arguments (each parameter at its `offset`).
    bool (*run)(const Dims&, size_t smem, const unsigned char* args, std::string* err);
};

std::vector<KernelInfo>& kernel_table();

template <class T>
constexpr const char* ptx_type_of() {
    if constexpr (std::is_pointer_v<T> || std::is_same_v<T, long long> ||
                  std::is_same_v<T, unsigned long long>)
        return ".u64";
    else if constexpr (std::is_same_v<T, int> || std::is_same_v<T, unsigned>)
        return ".u32";
    else if constexpr (std::is_same_v<T, float>)
        return ".f32";
    else
        static_assert(sizeof(T) == 0, "a kernel parameter type the emulator does not know");
}

template <auto K>
struct Entry;

template <class... A, void (*K)(A...)>
struct Entry<K> {
    static constexpr size_t N = sizeof...(A);
    // PTX's parameter space: each parameter aligned to its size.
    static constexpr std::array<size_t, N + 1> offsets() {
        std::array<size_t, N + 1> o{};
        size_t at = 0, i = 0;
        ((at = (at + sizeof(A) - 1) / sizeof(A) * sizeof(A), o[i++] = at, at += sizeof(A)), ...);
        o[N] = at;
        return o;
    }
    template <size_t... I>
    static std::tuple<A...> unpack(const unsigned char* args, std::index_sequence<I...>) {
        constexpr auto o = offsets();
        std::tuple<A...> t;
        ((memcpy(&std::get<I>(t), args + o[I], sizeof(A))), ...);
        return t;
    }
    static bool run(const Dims& d, size_t smem, const unsigned char* args, std::string* err) {
        const std::tuple<A...> t = unpack(args, std::index_sequence_for<A...>{});
        return run_grid(d, smem, [&] { std::apply(K, t); }, err);
    }
    static KernelInfo info(const char* name) {
        constexpr auto o = offsets();
        KernelInfo k{name, {}, o[N], &run};
        size_t i = 0;
        ((k.params.push_back({ptx_type_of<A>(), sizeof(A), o[i], std::is_pointer_v<A>}), ++i), ...);
        return k;
    }
};

struct Register {
    explicit Register(KernelInfo k) { kernel_table().push_back(std::move(k)); }
};

// Optional pointer parameters (0-based) by kernel name, declared beside each kernel
// (common.cuh's DELO_OPTIONAL_PARAMS): they may be null; every other pointer a kernel receives
// must point into a live allocation.
std::vector<std::pair<std::string, std::vector<int>>>& optional_params();

struct Optional {
    Optional(const char* name, std::vector<int> params) {
        optional_params().emplace_back(name, std::move(params));
    }
};

}  // namespace emu

#define DELO_OPTIONAL_PARAMS(name, ...) \
    static emu::Optional delo_emu_opt_##name(#name, {__VA_ARGS__});
#define DELO_EMU_KERNEL(name) static emu::Register delo_emu_reg_##name(emu::Entry<&name>::info(#name));
