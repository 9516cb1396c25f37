// A line-oriented reader of the PTX that nvcc emits: directives are one per line, an entry's
// parameters one per line between `(` and `)`, its body between braces.
#include "ptx.h"

#include <map>
#include <regex>
#include <sstream>

namespace emu::ptx {
namespace {

std::string trim(const std::string& l) {
    const size_t a = l.find_first_not_of(" \t\r");
    if (a == std::string::npos) return {};
    return l.substr(a, l.find_last_not_of(" \t\r") - a + 1);
}

bool starts(const std::string& l, const char* p) { return l.rfind(p, 0) == 0; }

// A `.shared [.align A] .TYPE name[N]...;` declaration: its name, bytes and alignment.
bool shared_decl(const std::string& l, std::string* name, unsigned* bytes, unsigned* align) {
    static const std::regex re(
        R"(^\.shared\s+(?:\.align\s+(\d+)\s+)?\.[busf](8|16|32|64)\s+([A-Za-z_$%][\w$]*)((?:\[\d+\])*)\s*;)");
    std::smatch m;
    if (!std::regex_search(l, m, re)) return false;
    *align = m[1].matched ? (unsigned)std::stoul(m[1]) : 1;
    unsigned long n = std::stoul(m[2]) / 8;
    static const std::regex dim(R"(\[(\d+)\])");
    const std::string dims = m[4];
    for (auto it = std::sregex_iterator(dims.begin(), dims.end(), dim); it != std::sregex_iterator(); ++it)
        n *= std::stoul((*it)[1]);
    *name = m[3];
    *bytes = (unsigned)n;
    return true;
}

}  // namespace

bool parse(const char* text, Module* out, std::string* err) {
    std::istringstream in(text);
    std::string raw;
    std::smatch m;
    static const std::regex version(R"(^\.version\s+(\d+)\.(\d+))");
    static const std::regex target(R"(^\.target\s+(sm_(\d+)(a|f)?))");
    static const std::regex entry(R"(\.entry\s+([A-Za-z_$][\w$]*)\s*\(?)");
    static const std::regex param(R"(^\.param\s+((?:\.align\s+\d+\s+)?\.[a-z]+\d+)\s+[\w$]+(\[\d+\])?)");
    static const std::regex maxntid(R"(^\.maxntid\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?)");
    enum { OUTSIDE, PARAMS, DIRECTIVES, BODY } where = OUTSIDE;
    int depth = 0;
    Entry* cur = nullptr;
    std::map<std::string, unsigned> module_shared;  // module-scope .shared: name → bytes
    std::vector<std::string> bodies;                // each entry's body, for those names
    while (std::getline(in, raw)) {
        const std::string l = trim(raw.substr(0, raw.find("//")));
        if (l.empty()) continue;
        if (where == OUTSIDE && depth == 0) {
            if (std::regex_search(l, m, version)) {
                out->isa_version = std::stoi(m[1]) * 10 + std::stoi(m[2]);
            } else if (std::regex_search(l, m, target)) {
                out->target = m[1];
                out->target_sm = std::stoi(m[2]);
                out->arch_specific = m[3].matched;
            } else if (std::regex_search(l, m, entry)) {
                out->entries.push_back(Entry{m[1], {}, 0, 0});
                bodies.emplace_back();
                cur = &out->entries.back();
                where = l.find(')') != std::string::npos ? DIRECTIVES : PARAMS;
                continue;
            } else if (starts(l, ".shared")) {
                std::string name;
                unsigned bytes, align;
                if (shared_decl(l, &name, &bytes, &align)) module_shared[name] = bytes;
            }
        }
        if (where == PARAMS) {
            if (std::regex_search(l, m, param)) cur->param_types.push_back(m[1].str() + m[2].str());
            if (l.find(')') != std::string::npos) where = DIRECTIVES;
            continue;
        }
        if (where == DIRECTIVES && std::regex_search(l, m, maxntid)) {
            cur->max_threads = (unsigned)std::stoul(m[1]);
            if (m[2].matched) cur->max_threads *= (unsigned)std::stoul(m[2]);
            if (m[3].matched) cur->max_threads *= (unsigned)std::stoul(m[3]);
        }
        if (where == BODY) {
            bodies.back() += l;
            bodies.back() += '\n';
            std::string name;
            unsigned bytes, align;
            if (starts(l, ".shared") && shared_decl(l, &name, &bytes, &align))
                cur->static_smem = (cur->static_smem + align - 1) / align * align + bytes;
        }
        for (char c : l) {
            if (c == '{') {
                if (where == DIRECTIVES) where = BODY;
                ++depth;
            } else if (c == '}') {
                if (--depth < 0) {
                    *err = "unbalanced braces";
                    return false;
                }
                if (depth == 0 && where == BODY) where = OUTSIDE;
            }
        }
    }
    if (out->isa_version == 0) {
        *err = "no .version directive: this is not PTX text";
        return false;
    }
    if (out->target.empty()) {
        *err = "no .target sm_XX directive";
        return false;
    }
    if (out->entries.empty()) {
        *err = "no .entry (kernel) in the module";
        return false;
    }
    if (depth != 0 || where != OUTSIDE) {
        *err = "the module ends inside an entry";
        return false;
    }
    for (size_t i = 0; i < out->entries.size(); ++i)
        for (auto& [name, bytes] : module_shared)
            if (bodies[i].find(name) != std::string::npos) out->entries[i].static_smem += bytes;
    return true;
}

}  // namespace emu::ptx
