// What the emulated driver reads from a PTX module (the text build.rs embeds): the ISA version,
// the target, and for every kernel entry its parameter types, `.maxntid` and static shared
// memory, so that launches are checked against the same limits the real driver applies.
#pragma once
#include <string>
#include <vector>

namespace emu::ptx {

struct Entry {
    std::string name;
    std::vector<std::string> param_types;  // ".u64", ".u32", ".f32", ...
    unsigned max_threads = 0;              // product of .maxntid (0: not declared)
    unsigned static_smem = 0;              // bytes of .shared declared for the entry
};

struct Module {
    int isa_version = 0;  // .version 9.0 → 90
    std::string target;   // e.g. "sm_80"
    int target_sm = 0;    // 80
    bool arch_specific = false;  // an `a`-suffixed target (sm_90a)
    std::vector<Entry> entries;
};

// Parses `text`; false with `err` set when it is not PTX this reader understands.
bool parse(const char* text, Module* out, std::string* err);

}  // namespace emu::ptx
