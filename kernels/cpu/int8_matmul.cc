// Weight-only int8 matmul for CPU decoding: y[M, N] = x[M, K] @ (w[N, K] * scale[N])^T.
//
// Batch-1 decoding reads every weight once per token, so its speed is the weights' bytes over
// DRAM bandwidth: int8 weights are a quarter of float32's. XLA:CPU has no fast int8 or bf16
// matrix-vector product at these shapes (dequantize-then-dot is slower than float32), hence
// this XLA FFI custom call. The weights stay output-major [N, K] (a tied embedding table
// [V, D] is already in that layout); each output channel n has one float32 scale.
//
// Work split: output channels in chunks over XLA's intra-op thread pool; within a chunk, row
// blocks and register tiles of NB channels x MB rows (common.h), each weight vector loaded and
// widened to float32 once per row tile.
//
// Accumulation is float32 (fused multiply-adds of x and the int8 weights, widened exactly to
// float32), then one multiply by the scale. A row's result does not depend on the other rows.
// AVX-512 (F, BW, VL) is used when the CPU has it (runtime check); the portable loop is the fallback.

#include "common.h"

namespace {

using namespace workbench_cpu;

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
WB_AVX512 inline __m512 LoadWeights(const int8_t* w, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, w)));
}

struct Int8Tiles {
  // NB channels x MB rows, starting at channel n and row r, into out[i * kChannelChunk + j]; K in steps
  // of 16 (masked tail).
  template <int NB, int MB>
  WB_AVX512 static void Tile(const Problem& p, int64_t n, int64_t r, float* out) {
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
};
#endif

void Chunk(const Problem& p, int64_t n0, int64_t n1) {
#if defined(__x86_64__)
  if (UseAvx512()) {
    TileChunk<Int8Tiles>(p, n0, n1);
    return;
  }
#endif
  ChunkPortable(p, n0, n1);
}

ffi::Error Int8MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                          ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y) {
  const auto wd = w.dimensions();
  if (wd.size() != 2) {
    return ffi::Error::InvalidArgument("int8_matmul: weights must be [N, K] (rank 2)");
  }
  const int64_t n = wd[0], k = wd[1];
  const auto rows = RowsOf(x, k, "int8_matmul");
  if (rows.has_error()) return rows.error();
  const int64_t m = rows.value();
  if (scale.element_count() != static_cast<size_t>(n)) {
    return ffi::Error::InvalidArgument("int8_matmul: scale must have N elements");
  }
  const Problem p{x.typed_data(), w.typed_data(), scale.typed_data(), y->typed_data(), m, k, n};
  return RunOverChannels(pool, y, "int8_matmul", m, n, k, [&p](int64_t n0, int64_t n1) { Chunk(p, n0, n1); });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(WorkbenchInt8Matmul, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
