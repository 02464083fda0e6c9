// CUDA's execution model on the CPU, for testing twins-np's kernels without a GPU.
//
// A kernel file (twins_np/kernels/*.cu) is compiled with the host C++ compiler, this header
// force-included first (g++ -include cuda_emu.h). It provides what the kernels use of CUDA:
//
//   - threadIdx, blockIdx, blockDim, gridDim (uint3 / dim3), warpSize;
//   - __syncthreads(): a barrier across the threads of a block;
//   - __shfl_sync, __shfl_up_sync, __shfl_down_sync, __shfl_xor_sync, __syncwarp: a lock-step
//     exchange among the lanes of a warp named in the mask (all of them must arrive);
//   - __shared__ memory: one copy, since blocks run one after another; it is filled with 0xFF
//     bytes (NaN for floats) at the start of every block, as fresh shared memory holds
//     whatever was there before;
//   - __int_as_float and friends, and the float/double math functions of <cmath>;
//   - device memory for the arguments (cuda_emu_alloc in the generated wrapper): each array
//     ends where an inaccessible page begins, and a thread that touches it (the classic
//     off-by-one) stops the launch with an error naming the thread and the argument.
//
// Each thread of a block is a fiber (ucontext), all on one OS thread: a thread runs until it
// reaches a barrier or a warp operation, then the next one runs. Which thread runs first is
// the schedule; cuda_emu_run_block tries one of four:
//
//   0  threads ascending   every runnable thread in index order, warp operations completed
//                          after each round (all warps advance in lock-step)
//   1  threads descending  the same, highest index first
//   2  warps ascending     warp 0 runs ahead (its shuffles completed at once) until it waits at
//                          a barrier or ends, then warp 1, ...
//   3  warps descending    the same, last warp first
//
// A kernel whose threads only meet where CUDA makes them meet gives the same bits under
// every schedule; a missing barrier shows up as results that depend on the schedule (or as
// 0xFF-poisoned shared memory read before it was written). Broken synchronisation is an
// error, not a hang: a barrier some threads of the block never reach (they exited), a warp
// operation whose mask names a lane that does not exist or has exited, lanes that wait at
// different warp operations, and a deadlock are reported with the block and thread.
#pragma once

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static

// the float overloads, as CUDA's math functions have them (erf(float) is erff, not erf(double))
using std::erf;
using std::exp;
using std::fabs;
using std::log;
using std::sqrt;
using std::tanh;

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_emu {

enum class Wait { runnable, barrier, warp, done };
enum class WarpOp { idx, up, down, bfly, sync };

struct Thread {
    ucontext_t ctx;
    Wait wait = Wait::runnable;
    uint3 idx{0, 0, 0};
    unsigned linear = 0;
    // the pending warp operation
    WarpOp op = WarpOp::sync;
    unsigned mask = 0;
    int arg = 0, width = 32;
    std::uint64_t value = 0, result = 0;
};

struct State {
    dim3 grid, block;
    uint3 block_idx{0, 0, 0};
    uint3 thread_idx{0, 0, 0};
    std::vector<Thread> threads;
    std::vector<char> stacks;
    ucontext_t scheduler;
    Thread* current = nullptr;
    std::string error;
    void (*body)(void*) = nullptr;
    void* body_ctx = nullptr;
    std::vector<std::pair<void*, std::size_t>> shared;  // the __shared__ variables, poisoned per block
    struct Allocation {
        char* base;  // guard page, slack, data, guard page
        std::size_t total, bytes;
        char* data;
        int label;  // the argument's index, for messages
    };
    std::vector<Allocation> allocations;
    char fault[256] = {0};  // written by the SIGSEGV handler (no allocation there)
    bool in_launch = false;
};

inline State state;
constexpr std::size_t kStackBytes = 128 * 1024;

inline std::string where(const Thread& t) {
    const State& s = state;
    char buf[160];
    std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u) (warp %u, lane %u)", s.block_idx.x, s.block_idx.y,
                  s.block_idx.z, t.idx.x, t.idx.y, t.idx.z, t.linear / 32, t.linear % 32);
    return buf;
}

// Called by a thread: wait here until the scheduler lets it go on.
inline void wait_here(Wait w) {
    Thread& me = *state.current;
    me.wait = w;
    swapcontext(&me.ctx, &state.scheduler);
}

// Called by a thread: report a misuse of CUDA and stop the launch (the fiber never resumes).
[[noreturn]] inline void fail(const std::string& what) {
    if (state.error.empty()) state.error = what + " at " + where(*state.current);
    Thread& me = *state.current;
    me.wait = Wait::done;
    swapcontext(&me.ctx, &state.scheduler);
    std::abort();  // not reached: a failed launch resumes no thread
}

inline void fiber_entry() {
    state.body(state.body_ctx);
    state.current->wait = Wait::done;  // returning resumes the scheduler (uc_link)
}

template <typename T>
inline std::uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffles move at most 8 bytes");
    std::uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
inline T from_bits(std::uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

template <typename T>
inline T warp_op(WarpOp op, unsigned mask, T var, int arg, int width) {
    Thread& me = *state.current;
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("warp shuffle width " + std::to_string(width) + " is not a power of two in [1, 32]");
    if (!(mask >> (me.linear % 32) & 1u)) fail("a warp operation's mask does not name the calling lane");
    me.op = op;
    me.mask = mask;
    me.arg = arg;
    me.width = width;
    me.value = to_bits(var);
    wait_here(Wait::warp);
    return from_bits<T>(me.result);
}

// Complete warp w's pending operation if every lane its mask names has arrived; false if not yet.
inline bool resolve_warp(unsigned w) {
    State& s = state;
    const unsigned n = s.threads.size(), first = 32 * w, lanes = n - first < 32 ? n - first : 32;
    Thread* lead = nullptr;
    for (unsigned l = 0; l < lanes; ++l)
        if (s.threads[first + l].wait == Wait::warp) {
            lead = &s.threads[first + l];
            break;
        }
    if (!lead) return false;
    const unsigned mask = lead->mask;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        if (l >= lanes) {
            char buf[160];
            std::snprintf(buf, sizeof buf, "warp operation with mask 0x%08x names lane %u, which does not exist (%u threads per block)",
                          mask, l, n);
            s.error = std::string(buf) + " at " + where(*lead);
            return false;
        }
        const Thread& t = s.threads[first + l];
        if (t.wait == Wait::done) {
            s.error = "warp operation waits for lane " + std::to_string(l) + ", which has exited, at " + where(*lead);
            return false;
        }
        if (t.wait == Wait::warp && (t.mask != mask || (t.op == WarpOp::sync) != (lead->op == WarpOp::sync))) {
            s.error = "lanes of one warp wait at different warp operations at " + where(*lead) + " and " + where(t);
            return false;
        }
        if (t.wait != Wait::warp) return false;  // not all there yet
    }
    for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        Thread& t = s.threads[first + l];
        if (t.op != WarpOp::sync) {
            const int width = t.width, base = int(l) & ~(width - 1);
            int src = int(l);
            switch (t.op) {
                case WarpOp::idx: src = base + (t.arg % width + width) % width; break;
                case WarpOp::up: src = int(l) - t.arg >= base ? int(l) - t.arg : int(l); break;
                case WarpOp::down: src = int(l) + t.arg < base + width ? int(l) + t.arg : int(l); break;
                case WarpOp::bfly: src = (int(l) ^ t.arg) < base + width ? int(l) ^ t.arg : int(l); break;
                case WarpOp::sync: break;
            }
            if (src < 0 || src >= 32 || !(mask >> src & 1u)) {
                s.error = "lane " + std::to_string(l) + " reads lane " + std::to_string(src) + ", which is not in the mask, at " +
                          where(t);
                return false;
            }
            t.result = s.threads[first + src].value;
        }
        t.wait = Wait::runnable;
    }
    return true;
}

inline std::size_t page_size() { return std::size_t(sysconf(_SC_PAGESIZE)); }

// Device memory for one array argument of `bytes` bytes: it ends exactly where a PROT_NONE page
// begins, and another such page lies before the slack in front of it.
inline char* alloc(std::size_t bytes, int label) {
    const std::size_t page = page_size(), span = (bytes + page - 1) / page * page, total = span + 2 * page;
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    char* base = static_cast<char*>(p);
    mprotect(base, page, PROT_NONE);
    mprotect(base + page + span, page, PROT_NONE);
    char* data = base + page + (span - bytes);
    std::memset(base + page, 0xFF, span);  // the slack in front stays 0xFF (NaN): read, it poisons; written, it is seen
    state.allocations.push_back({base, total, bytes, data, label});
    return data;
}

// True if no thread wrote into the slack in front of the array.
inline bool slack_intact(const char* data) {
    for (const auto& a : state.allocations)
        if (a.data == data) {
            for (const char* p = a.base + page_size(); p < a.data; ++p)
                if (static_cast<unsigned char>(*p) != 0xFF) return false;
            return true;
        }
    return false;
}

inline void release(char* data) {
    auto& all = state.allocations;
    for (std::size_t i = 0; i < all.size(); ++i)
        if (all[i].data == data) {
            munmap(all[i].base, all[i].total);
            all.erase(all.begin() + long(i));
            return;
        }
}

inline struct sigaction previous_segv, previous_bus;

// A thread touched a guard page (or other memory it may not touch): end the launch there.
inline void on_fault(int sig, siginfo_t* info, void* uctx) {
    State& s = state;
    if (!s.in_launch || !s.current) {  // not ours: let the previous handler see it
        sigaction(SIGSEGV, &previous_segv, nullptr);
        sigaction(SIGBUS, &previous_bus, nullptr);
        raise(sig);
        return;
    }
    const char* addr = static_cast<const char*>(info->si_addr);
    const Thread& t = *s.current;
    int n = std::snprintf(s.fault, sizeof s.fault, "invalid memory access at %p", static_cast<const void*>(addr));
    for (const auto& a : s.allocations) {
        const char* end = a.data + a.bytes;
        if (addr >= end && addr < a.base + a.total)
            n = std::snprintf(s.fault, sizeof s.fault, "access %ld bytes past the end of argument %d (%zu bytes)",
                              long(addr - end), a.label, a.bytes);
        else if (addr >= a.base && addr < a.data)
            n = std::snprintf(s.fault, sizeof s.fault, "access %ld bytes before the start of argument %d", long(a.data - addr),
                              a.label);
    }
    std::snprintf(s.fault + n, sizeof s.fault - std::size_t(n), " by block (%u,%u,%u) thread (%u,%u,%u)", s.block_idx.x,
                  s.block_idx.y, s.block_idx.z, t.idx.x, t.idx.y, t.idx.z);
    s.current->wait = Wait::done;
    (void)uctx;
    setcontext(&s.scheduler);  // back to the scheduler, which sees the fault and ends the launch
}

inline void run_thread(Thread& t) {
    State& s = state;
    s.current = &t;
    s.thread_idx = t.idx;
    swapcontext(&s.scheduler, &t.ctx);
}

// Run every thread of the current block to its end under one schedule; false on an error.
inline bool run_block(int schedule) {
    State& s = state;
    const unsigned n = s.threads.size(), warps = (n + 31) / 32;
    const bool descending = schedule & 1, warp_ahead = schedule & 2;
    for (auto& region : s.shared) std::memset(region.first, 0xFF, region.second);
    for (unsigned i = 0; i < n; ++i) {
        Thread& t = s.threads[i];
        t = Thread{};
        t.linear = i;
        t.idx = {i % s.block.x, i / s.block.x % s.block.y, i / (s.block.x * s.block.y)};
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = s.stacks.data() + std::size_t(i) * kStackBytes;
        t.ctx.uc_stack.ss_size = kStackBytes;
        t.ctx.uc_link = &s.scheduler;
        makecontext(&t.ctx, fiber_entry, 0);
    }
    for (;;) {
        bool progress = false;
        for (unsigned k = 0; k < warps && s.error.empty() && !s.fault[0]; ++k) {
            const unsigned w = descending ? warps - 1 - k : k;
            const unsigned first = 32 * w, lanes = n - first < 32 ? n - first : 32;
            bool again;
            do {
                for (unsigned m = 0; m < lanes && s.error.empty() && !s.fault[0]; ++m) {
                    Thread& t = s.threads[first + (descending ? lanes - 1 - m : m)];
                    if (t.wait == Wait::runnable) {
                        run_thread(t);
                        progress = true;
                    }
                }
                again = warp_ahead && s.error.empty() && !s.fault[0] && resolve_warp(w);
                progress |= again;
            } while (again);
        }
        if (s.fault[0]) s.error = s.fault;
        if (!warp_ahead)
            for (unsigned w = 0; w < warps && s.error.empty(); ++w) progress |= resolve_warp(w);
        if (!s.error.empty()) return false;
        if (progress) continue;
        unsigned done = 0, at_barrier = 0, at_warp = 0;
        for (const Thread& t : s.threads) {
            done += t.wait == Wait::done;
            at_barrier += t.wait == Wait::barrier;
            at_warp += t.wait == Wait::warp;
        }
        if (done == n) return true;
        if (at_barrier == n) {
            for (Thread& t : s.threads) t.wait = Wait::runnable;
            continue;
        }
        const Thread* stuck = nullptr;
        for (const Thread& t : s.threads)
            if (t.wait != Wait::done) {
                stuck = &t;
                break;
            }
        char buf[200];
        if (at_barrier && done)
            std::snprintf(buf, sizeof buf, "__syncthreads reached by %u threads of the block while %u have exited", at_barrier, done);
        else
            std::snprintf(buf, sizeof buf, "deadlock: %u threads wait at __syncthreads, %u at warp operations, %u have exited",
                          at_barrier, at_warp, done);
        s.error = std::string(buf) + " (first waiting: " + where(*stuck) + ")";
        return false;
    }
}

// Run the grid block by block; 0 on success, -1 with state.error set.
inline int run_grid(dim3 grid, dim3 block, int schedule, void (*body)(void*), void* ctx) {
    State& s = state;
    s.error.clear();
    const unsigned long long threads = 1ULL * block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !threads) s.error = "a launch with a zero grid or block dimension";
    else if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024)
        s.error = "more than 1024 threads per block (or a block dimension over CUDA's limit)";
    else if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        s.error = "a grid dimension over CUDA's limit (2^31 - 1 blocks in x, 65535 in y and z)";
    else if (schedule < 0 || schedule > 3)
        s.error = "unknown schedule " + std::to_string(schedule);
    if (!s.error.empty()) return -1;
    s.grid = grid;
    s.block = block;
    s.body = body;
    s.body_ctx = ctx;
    s.threads.assign(threads, Thread{});
    if (s.stacks.size() < threads * kStackBytes) s.stacks.assign(threads * kStackBytes, 0);
    struct sigaction act;
    std::memset(&act, 0, sizeof act);
    act.sa_sigaction = on_fault;
    act.sa_flags = SA_SIGINFO;
    sigemptyset(&act.sa_mask);
    sigaction(SIGSEGV, &act, &previous_segv);
    sigaction(SIGBUS, &act, &previous_bus);
    s.fault[0] = 0;
    s.in_launch = true;
    int rc = 0;
    for (unsigned z = 0; z < grid.z && !rc; ++z)
        for (unsigned y = 0; y < grid.y && !rc; ++y)
            for (unsigned x = 0; x < grid.x && !rc; ++x) {
                s.block_idx = {x, y, z};
                if (!run_block(schedule)) rc = -1;
            }
    s.in_launch = false;
    sigaction(SIGSEGV, &previous_segv, nullptr);
    sigaction(SIGBUS, &previous_bus, nullptr);
    return rc;
}

// --- the kernel's parameters, read from CUDA-style void* args[] -----------------------------

template <typename T>
inline std::string type_code() {
    if constexpr (std::is_pointer<T>::value) {
        using E = typename std::remove_pointer<T>::type;
        return type_code<typename std::remove_cv<E>::type>() + (std::is_const<E>::value ? "*c" : "*");
    } else if constexpr (std::is_same<T, float>::value) {
        return "f32";
    } else if constexpr (std::is_same<T, double>::value) {
        return "f64";
    } else if constexpr (std::is_integral<T>::value) {
        return (std::is_signed<T>::value ? "i" : "u") + std::to_string(8 * sizeof(T));
    } else {
        static_assert(sizeof(T) == 0, "kernel parameter type not supported by the emulator");
        return "";
    }
}

template <typename... A>
inline std::string signature(void (*)(A...)) {
    std::string out;
    ((out += (out.empty() ? "" : ","), out += type_code<A>()), ...);
    return out;
}

template <typename... A, std::size_t... I>
inline void invoke(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<typename std::remove_cv<A>::type*>(args[I])...);
}

template <typename... A>
inline int launch(void (*k)(A...), const unsigned* grid, const unsigned* block, void** args, int schedule) {
    struct Call {
        void (*k)(A...);
        void** args;
    } call{k, args};
    auto body = [](void* p) {
        auto* c = static_cast<Call*>(p);
        invoke(c->k, c->args, std::index_sequence_for<A...>{});
    };
    return run_grid(dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), schedule, body, &call);
}

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::state.thread_idx)
#define blockIdx (::cuda_emu::state.block_idx)
#define blockDim (::cuda_emu::state.block)
#define gridDim (::cuda_emu::state.grid)
#define warpSize 32

inline void __syncthreads() { cuda_emu::wait_here(cuda_emu::Wait::barrier); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { cuda_emu::warp_op(cuda_emu::WarpOp::sync, mask, 0, 0, 32); }

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    return cuda_emu::warp_op(cuda_emu::WarpOp::idx, mask, var, src_lane, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return cuda_emu::warp_op(cuda_emu::WarpOp::up, mask, var, int(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return cuda_emu::warp_op(cuda_emu::WarpOp::down, mask, var, int(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    return cuda_emu::warp_op(cuda_emu::WarpOp::bfly, mask, var, lane_mask, width);
}

inline float __int_as_float(int i) { return cuda_emu::from_bits<float>(static_cast<std::uint32_t>(i)); }
inline int __float_as_int(float f) { return static_cast<int>(static_cast<std::uint32_t>(cuda_emu::to_bits(f))); }
inline double __longlong_as_double(long long i) { return cuda_emu::from_bits<double>(static_cast<std::uint64_t>(i)); }
inline long long __double_as_longlong(double d) { return static_cast<long long>(cuda_emu::to_bits(d)); }
