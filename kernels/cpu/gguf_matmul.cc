// Matmul on weights kept in GGUF's own blocks, as llama.cpp ships them: y[M, N] = x[M, K] @ W^T,
// W[N, K] stored output-major as raw bytes [N, K / 32 * block bytes], 32 weights per block:
//
//   Q4_1 (20 bytes): fp16 d, fp16 m, 16 bytes of nibbles; weight j = d * q_j + m, q_j = qs[j] & 15
//                    for j < 16 and qs[j - 16] >> 4 for j >= 16.
//   Q8_0 (34 bytes): fp16 d, 32 int8 q; weight j = d * q_j.
//
// Each weight is rebuilt in float32 exactly as the GGUF reader dequantizes it (d * q is exact in
// float32 for both formats, and Q4_1's + m rounds once, fused or not), so the product is the float32
// model's own weights, summed in another order. Q4_1 is 0.625 bytes per weight, a fifth of float32's.
//
// Layout of the work as in int8_matmul.cc: output channels in chunks over XLA's pool, row blocks and
// register tiles of NB channels x MB rows (common.h); a row's result does not depend on the other rows.

#include <string>
#include <vector>

#include "common.h"

namespace {

using namespace workbench_cpu;

struct Problem {
  const float* x;    // [M, K]
  const uint8_t* w;  // [N, row_bytes]
  float* y;          // [M, N]
  int64_t m, k, n, row_bytes;
};

struct Q4_1 {
  static constexpr int64_t kBytes = 20;
  static constexpr const char* kName = "q4_1_matmul";
  static void Dequantize(const uint8_t* block, float* w) {
    const float d = LoadHalf(block), m = LoadHalf(block + 2);
    const uint8_t* qs = block + 4;
    for (int j = 0; j < 16; ++j) {
      w[j] = static_cast<float>(qs[j] & 15) * d + m;
      w[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
#if defined(__x86_64__)
  WB_AVX512 static void Load(const uint8_t* block, __m512& lo, __m512& hi) {
    uint16_t dh, mh;
    std::memcpy(&dh, block, 2);
    std::memcpy(&mh, block + 2, 2);
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(dh)), m = _mm512_set1_ps(_cvtsh_ss(mh));
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 4));
    const __m128i low4 = _mm_set1_epi8(15);
    lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(qs, low4))), d, m);
    hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(qs, 4), low4))), d, m);
  }
#endif
};

struct Q8_0 {
  static constexpr int64_t kBytes = 34;
  static constexpr const char* kName = "q8_0_matmul";
  static void Dequantize(const uint8_t* block, float* w) {
    const float d = LoadHalf(block);
    const int8_t* q = reinterpret_cast<const int8_t*>(block + 2);
    for (int j = 0; j < 32; ++j) w[j] = static_cast<float>(q[j]) * d;
  }
#if defined(__x86_64__)
  WB_AVX512 static void Load(const uint8_t* block, __m512& lo, __m512& hi) {
    uint16_t dh;
    std::memcpy(&dh, block, 2);
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(dh));
    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                           _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2)))), d);
    hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                           _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 18)))), d);
  }
#endif
};

// ---------------------------------------------------------------- portable path

template <class F>
void ChunkPortable(const Problem& p, int64_t n0, int64_t n1) {
  std::vector<float> w(p.k);
  const int64_t blocks = p.k / 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = p.w + n * p.row_bytes;
    for (int64_t b = 0; b < blocks; ++b) F::Dequantize(row + b * F::kBytes, w.data() + b * 32);
    for (int64_t r = 0; r < p.m; ++r) {
      const float* xr = p.x + r * p.k;
      float acc = 0.0f;
      for (int64_t i = 0; i < p.k; ++i) acc += xr[i] * w[i];
      p.y[r * p.n + n] = acc;
    }
  }
}

// ---------------------------------------------------------------- AVX-512 path

#if defined(__x86_64__)
template <class F>
struct BlockTiles {
  // NB channels x MB rows, starting at channel n and row r, into out[i * kChannelChunk + j].
  template <int NB, int MB>
  WB_AVX512 static void Tile(const Problem& p, int64_t n, int64_t r, float* out) {
    __m512 acc[NB][MB];
    for (int j = 0; j < NB; ++j)
      for (int i = 0; i < MB; ++i) acc[j][i] = _mm512_setzero_ps();
    const int64_t blocks = p.k / 32;
    const float* x = p.x + r * p.k;
    for (int64_t b = 0; b < blocks; ++b) {
      for (int j = 0; j < NB; ++j) {
        __m512 lo, hi;
        F::Load(p.w + (n + j) * p.row_bytes + b * F::kBytes, lo, hi);
        for (int i = 0; i < MB; ++i) {
          acc[j][i] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * p.k + b * 32), lo, acc[j][i]);
          acc[j][i] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * p.k + b * 32 + 16), hi, acc[j][i]);
        }
      }
    }
    for (int j = 0; j < NB; ++j)
      for (int i = 0; i < MB; ++i) out[i * kChannelChunk + j] = _mm512_reduce_add_ps(acc[j][i]);
  }
};
#endif

template <class F>
void Chunk(const Problem& p, int64_t n0, int64_t n1) {
#if defined(__x86_64__)
  if (UseAvx512()) {
    TileChunk<BlockTiles<F>>(p, n0, n1);
    return;
  }
#endif
  ChunkPortable<F>(p, n0, n1);
}

template <class F>
ffi::Error BlockMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::U8> w,
                           ffi::ResultBuffer<ffi::F32> y) {
  const std::string name = F::kName;
  const auto wd = w.dimensions();
  if (wd.size() != 2 || wd[1] % F::kBytes != 0) {
    return ffi::Error::InvalidArgument(name + ": weights must be [N, K / 32 * " + std::to_string(F::kBytes) +
                                       "] bytes");
  }
  const int64_t n = wd[0], row_bytes = wd[1], k = row_bytes / F::kBytes * 32;
  const auto rows = RowsOf(x, k, F::kName);
  if (rows.has_error()) return rows.error();
  const int64_t m = rows.value();
  const Problem p{x.typed_data(), w.typed_data(), y->typed_data(), m, k, n, row_bytes};
  return RunOverChannels(pool, y, name, m, n, k, [&p](int64_t n0, int64_t n1) { Chunk<F>(p, n0, n1); });
}

// What both block formats' handlers take: the pool, x [..., K] float32, the blocks uint8 [N, bytes].
auto BlockBinding() {
  return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::U8>>().Ret<
      ffi::Buffer<ffi::F32>>();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(WorkbenchQ4_1Matmul, BlockMatmulImpl<Q4_1>, BlockBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(WorkbenchQ8_0Matmul, BlockMatmulImpl<Q8_0>, BlockBinding());
