// What the CPU kernels share: the AVX-512 check, the test/tuning switches, fp16 -> float, and the
// split of output channels over XLA's intra-op thread pool.
#ifndef WORKBENCH_KERNELS_CPU_COMMON_H_
#define WORKBENCH_KERNELS_CPU_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace workbench_cpu {

namespace ffi = xla::ffi;

constexpr int64_t kRowBlock = 16;      // rows sharing one pass over a chunk's weights
constexpr int64_t kChannelChunk = 64;  // output channels per scheduled unit of work

// 1: run the portable loops even on an AVX-512 CPU (tests check both paths).
inline std::atomic<int> force_portable{0};
// Multiply-adds (M * N * K) from which a product is split over the thread pool: every projection of a
// SmolLM2 decoding step (576 x 192 = 110K and up). One-row products were kept on the calling thread
// (threshold 4M) until measured: split, a 576x1536 Q4_1 row takes 23 us instead of 43, and packed AR
// decoding ran 12.9 instead of 14.2 ms per token (2026-12-07, same run).
inline std::atomic<int64_t> min_parallel_work{int64_t{1} << 16};

inline bool HasAvx512() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

inline bool UseAvx512() { return HasAvx512() && !force_portable.load(std::memory_order_relaxed); }

// IEEE half -> float, exact (every half is a float).
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1Fu) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

inline float LoadHalf(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return HalfToFloat(h);
}

// Runs chunk(n0, n1) over [0, n) in kChannelChunk pieces. Products of `work` multiply-adds or more
// are shared with the pool's threads: the caller takes chunks too and waits only for chunks another
// thread has started, never for a task that has not run (a busy pool cannot deadlock it); late
// tasks find nothing left. Waking a pool thread costs microseconds, so only products below
// min_parallel_work run on the calling thread alone.
inline void ForChannelChunks(ffi::ThreadPool& pool, int64_t n, int64_t work,
                             const std::function<void(int64_t, int64_t)>& chunk) {
  struct State {
    std::function<void(int64_t, int64_t)> chunk;
    int64_t n, chunks;
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  state->chunk = chunk;
  state->n = n;
  state->chunks = (n + kChannelChunk - 1) / kChannelChunk;
  auto drain = [](State& s) {
    for (;;) {
      const int64_t c = s.next.fetch_add(1, std::memory_order_relaxed);
      if (c >= s.chunks) return;
      const int64_t n0 = c * kChannelChunk;
      s.chunk(n0, std::min(s.n, n0 + kChannelChunk));
      s.done.fetch_add(1, std::memory_order_release);
    }
  };
  const bool split = work >= min_parallel_work.load(std::memory_order_relaxed);
  const int64_t helpers = split ? std::min<int64_t>(pool.num_threads(), state->chunks) - 1 : 0;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state, drain] { drain(*state); });
  drain(*state);
  while (state->done.load(std::memory_order_acquire) < state->chunks) std::this_thread::yield();
}

#if defined(__x86_64__)
#define WB_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))

// The AVX-512 loops over one chunk of output channels [n0, n1) of a problem p (fields m, n, y): rows in
// blocks of kRowBlock (x's block stays in L2 while the chunk's weights stream past once), and within a
// row block tiles of NB channels x MB rows, Kernel::Tile<NB, MB>(p, n, r, out) accumulating in registers
// and writing out[i * kChannelChunk + j]. The chunk's outputs gather in `out` and are copied out row by
// row: y's rows are N floats apart, often a multiple of 4 KiB, and scattered stores into them alias in
// the L1 cache (M = 8 took 5x M = 4's time before this, for twice the work).
template <class Kernel, int NB, class P>
WB_AVX512 void TileRows(const P& p, int64_t n, int64_t r0, int64_t r1, float* out) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) Kernel::template Tile<NB, 4>(p, n, r, out + (r - r0) * kChannelChunk);
  float* rest = out + (r - r0) * kChannelChunk;
  switch (r1 - r) {
    case 3: Kernel::template Tile<NB, 3>(p, n, r, rest); break;
    case 2: Kernel::template Tile<NB, 2>(p, n, r, rest); break;
    case 1: Kernel::template Tile<NB, 1>(p, n, r, rest); break;
    default: break;
  }
}

template <class Kernel, class P>
WB_AVX512 void TileChunk(const P& p, int64_t n0, int64_t n1) {
  alignas(64) float out[kRowBlock * kChannelChunk];
  for (int64_t r0 = 0; r0 < p.m; r0 += kRowBlock) {
    const int64_t r1 = std::min(p.m, r0 + kRowBlock);
    int64_t n = n0;
    if (r1 - r0 == 1) {  // one row: more channels in flight hide the loads' latency
      for (; n + 8 <= n1; n += 8) Kernel::template Tile<8, 1>(p, n, r0, out + (n - n0));
    }
    for (; n + 4 <= n1; n += 4) TileRows<Kernel, 4>(p, n, r0, r1, out + (n - n0));
    for (; n < n1; ++n) TileRows<Kernel, 1>(p, n, r0, r1, out + (n - n0));
    for (int64_t r = r0; r < r1; ++r) {
      std::copy(out + (r - r0) * kChannelChunk, out + (r - r0) * kChannelChunk + (n1 - n0), p.y + r * p.n + n0);
    }
  }
}
#endif

// y = x @ W^T for M rows, N channels and K inputs: checks y's size, answers the empty cases, and runs
// chunk(n0, n1) over the channels (ForChannelChunks).
inline ffi::Error RunOverChannels(ffi::ThreadPool& pool, ffi::Result<ffi::Buffer<ffi::F32>>& y, const std::string& name,
                                  int64_t m, int64_t n, int64_t k, const std::function<void(int64_t, int64_t)>& chunk) {
  if (y->element_count() != static_cast<size_t>(m * n)) {
    return ffi::Error::InvalidArgument(name + ": output must be [M, N]");
  }
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(y->typed_data(), y->typed_data() + m * n, 0.0f);
    return ffi::Error::Success();
  }
  ForChannelChunks(pool, n, m * n * k, chunk);
  return ffi::Error::Success();
}

// Rows of x ([..., K] flattened), checked against the weights' K.
inline ffi::ErrorOr<int64_t> RowsOf(const ffi::Buffer<ffi::F32>& x, int64_t k, const char* name) {
  const auto dims = x.dimensions();
  if (dims.size() < 1 || dims.back() != k) {
    return ffi::Error::InvalidArgument(std::string(name) + ": x's last dimension must equal the weights' K");
  }
  return k == 0 ? 0 : static_cast<int64_t>(x.element_count()) / k;
}

}  // namespace workbench_cpu

#endif  // WORKBENCH_KERNELS_CPU_COMMON_H_
