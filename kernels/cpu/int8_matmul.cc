// Weight-only int8 matmul for CPU decoding: y[M, N] = x[M, K] @ (w[N, K] * scale[N])^T.
//
// Batch-1 decoding reads every weight once per token, so its speed is the weights' bytes over
// DRAM bandwidth: int8 weights are a quarter of float32's. XLA:CPU has no fast int8 or bf16
// matrix-vector product at these shapes (dequantize-then-dot is slower than float32), hence
// this XLA FFI custom call. The weights stay output-major [N, K] (a tied embedding table
// [V, D] is already in that layout); each output channel n has one float32 scale.
//
// Work split: output channels in chunks over XLA's intra-op thread pool (the calling thread
// takes chunks too; it waits only for chunks another thread has started, never for a task
// that has not run, so a busy pool cannot deadlock it). Within a chunk, rows go in blocks of
// up to kRowBlock (x's block stays in L2 while the chunk's weights stream past once), and
// within a row block a tile of NB channels x MB rows accumulates in registers, each weight
// vector loaded and widened to float32 once per row tile.
//
// Accumulation is float32 (fused multiply-add of exact int8 -> float32 products), then one
// multiply by the scale. AVX-512 (F, BW, VL) is used when the CPU has it (runtime check); the
// portable loop is the fallback.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRowBlock = 16;      // rows sharing one pass over a chunk's weights
constexpr int64_t kChannelChunk = 64;  // output channels per scheduled unit of work

struct Problem {
  const float* x;      // [M, K]
  const int8_t* w;     // [N, K]
  const float* scale;  // [N]
  float* y;            // [M, N]
  int64_t m, k, n;
};

// ---------------------------------------------------------------- portable path

void ChunkPortable(const Problem& p, int64_t n0, int64_t n1) {
  for (int64_t r0 = 0; r0 < p.m; r0 += kRowBlock) {
    const int64_t r1 = std::min(p.m, r0 + kRowBlock);
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* wn = p.w + n * p.k;
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = p.x + r * p.k;
        float acc = 0.0f;
        for (int64_t i = 0; i < p.k; ++i) acc += xr[i] * static_cast<float>(wn[i]);
        p.y[r * p.n + n] = acc * p.scale[n];
      }
    }
  }
}

// ---------------------------------------------------------------- AVX-512 path

#if defined(__x86_64__)
#define WB_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

WB_AVX512 inline __m512 LoadWeights(const int8_t* w, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, w)));
}

// NB channels x MB rows, starting at channel n and row r, into out[i * kChannelChunk + j] (the
// chunk's output tile); K in steps of 16 (masked tail).
template <int NB, int MB>
WB_AVX512 void Tile(const Problem& p, int64_t n, int64_t r, float* out) {
  __m512 acc[NB][MB];
  for (int j = 0; j < NB; ++j)
    for (int i = 0; i < MB; ++i) acc[j][i] = _mm512_setzero_ps();
  const int8_t* w = p.w + n * p.k;
  const float* x = p.x + r * p.k;
  const int64_t k = p.k;
  int64_t c = 0;
  for (; c + 16 <= k; c += 16) {
    __m512 xs[MB];
    for (int i = 0; i < MB; ++i) xs[i] = _mm512_loadu_ps(x + i * k + c);
    for (int j = 0; j < NB; ++j) {
      const __m512 wv = LoadWeights(w + j * k + c, 0xFFFF);
      for (int i = 0; i < MB; ++i) acc[j][i] = _mm512_fmadd_ps(xs[i], wv, acc[j][i]);
    }
  }
  if (c < k) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (k - c)) - 1u);
    __m512 xs[MB];
    for (int i = 0; i < MB; ++i) xs[i] = _mm512_maskz_loadu_ps(mask, x + i * k + c);
    for (int j = 0; j < NB; ++j) {
      const __m512 wv = LoadWeights(w + j * k + c, mask);
      for (int i = 0; i < MB; ++i) acc[j][i] = _mm512_fmadd_ps(xs[i], wv, acc[j][i]);
    }
  }
  for (int j = 0; j < NB; ++j) {
    const float s = p.scale[n + j];
    for (int i = 0; i < MB; ++i) out[i * kChannelChunk + j] = _mm512_reduce_add_ps(acc[j][i]) * s;
  }
}

template <int NB>
WB_AVX512 void Rows(const Problem& p, int64_t n, int64_t r0, int64_t r1, float* out) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) Tile<NB, 4>(p, n, r, out + (r - r0) * kChannelChunk);
  float* rest = out + (r - r0) * kChannelChunk;
  switch (r1 - r) {
    case 3: Tile<NB, 3>(p, n, r, rest); break;
    case 2: Tile<NB, 2>(p, n, r, rest); break;
    case 1: Tile<NB, 1>(p, n, r, rest); break;
    default: break;
  }
}

WB_AVX512 void ChunkAvx512(const Problem& p, int64_t n0, int64_t n1) {
  // The chunk's outputs gather here and are copied out row by row: y's rows are N floats apart,
  // often a multiple of 4 KiB, and scattered stores into them alias in the L1 cache.
  alignas(64) float out[kRowBlock * kChannelChunk];
  for (int64_t r0 = 0; r0 < p.m; r0 += kRowBlock) {
    const int64_t r1 = std::min(p.m, r0 + kRowBlock);
    int64_t n = n0;
    if (r1 - r0 == 1) {  // one row: more channels in flight hide the loads' latency
      for (; n + 8 <= n1; n += 8) Tile<8, 1>(p, n, r0, out + (n - n0));
    }
    for (; n + 4 <= n1; n += 4) Rows<4>(p, n, r0, r1, out + (n - n0));
    for (; n < n1; ++n) Rows<1>(p, n, r0, r1, out + (n - n0));
    for (int64_t r = r0; r < r1; ++r) {
      std::copy(out + (r - r0) * kChannelChunk, out + (r - r0) * kChannelChunk + (n1 - n0), p.y + r * p.n + n0);
    }
  }
}

bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl");
  return has;
}
#else
bool HasAvx512() { return false; }
void ChunkAvx512(const Problem& p, int64_t n0, int64_t n1) { ChunkPortable(p, n0, n1); }
#endif

// Set to 1 (by the Python test hook) to force the portable path.
std::atomic<int> force_portable{0};
// Multiply-adds (M * N * K) from which a product is split over the thread pool.
std::atomic<int64_t> min_parallel_work{int64_t{1} << 22};

void Chunk(const Problem& p, int64_t n0, int64_t n1) {
  if (HasAvx512() && !force_portable.load(std::memory_order_relaxed)) {
    ChunkAvx512(p, n0, n1);
  } else {
    ChunkPortable(p, n0, n1);
  }
}

// ---------------------------------------------------------------- threading

struct Shared {
  Problem p;
  int64_t chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// Take chunks until none is left.
void Drain(Shared& s) {
  for (;;) {
    const int64_t c = s.next.fetch_add(1, std::memory_order_relaxed);
    if (c >= s.chunks) return;
    const int64_t n0 = c * kChannelChunk;
    Chunk(s.p, n0, std::min(s.p.n, n0 + kChannelChunk));
    s.done.fetch_add(1, std::memory_order_release);
  }
}

ffi::Error Int8MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                          ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (wd.size() != 2) {
    return ffi::Error::InvalidArgument("int8_matmul: weights must be [N, K] (rank 2)");
  }
  const int64_t n = wd[0], k = wd[1];
  if (xd.size() < 1 || xd.back() != k) {
    return ffi::Error::InvalidArgument("int8_matmul: x's last dimension must equal the weights' K");
  }
  if (scale.element_count() != static_cast<size_t>(n)) {
    return ffi::Error::InvalidArgument("int8_matmul: scale must have N elements");
  }
  const int64_t m = k == 0 ? 0 : static_cast<int64_t>(x.element_count()) / k;
  if (y->element_count() != static_cast<size_t>(m * n)) {
    return ffi::Error::InvalidArgument("int8_matmul: output must be [M, N]");
  }
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(y->typed_data(), y->typed_data() + m * n, 0.0f);
    return ffi::Error::Success();
  }
  auto shared = std::make_shared<Shared>();
  shared->p = Problem{x.typed_data(), w.typed_data(), scale.typed_data(), y->typed_data(), m, k, n};
  shared->chunks = (n + kChannelChunk - 1) / kChannelChunk;
  // Waking a pool thread costs microseconds: small products (a decoding step's projections, each
  // a few hundred KB of weights) run on the calling thread alone.
  const bool split = m * n * k >= min_parallel_work.load(std::memory_order_relaxed);
  const int64_t helpers = split ? std::min<int64_t>(pool.num_threads(), shared->chunks) - 1 : 0;
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([shared] { Drain(*shared); });
  }
  Drain(*shared);
  // Every chunk has been taken; wait for those still running on other threads.
  while (shared->done.load(std::memory_order_acquire) < shared->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(WorkbenchInt8Matmul, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

extern "C" {
// 1: the AVX-512 path runs on this CPU (tests and benchmarks report it).
int workbench_int8_has_avx512() { return HasAvx512() ? 1 : 0; }
// Force (1) or release (0) the portable path, so tests check both on an AVX-512 machine.
void workbench_int8_force_portable(int on) { force_portable.store(on); }
// Products of at least `work` multiply-adds are split over the pool (0: all of them; tests, tuning).
void workbench_int8_set_min_parallel_work(int64_t work) { min_parallel_work.store(work); }
}
