#pragma once
// Batched tiled GEMM with a fused epilogue, used by the cross network:
//   C[batch][r][c] = sum_k A[batch][r][k] * B[batch][k][c],  then epi(batch, split, r, c, C).
//
// Block tile 64 x 64 x 32, 128 threads (4 warps, each a 32 x 32 quarter). Global -> registers ->
// shared memory with one tile of register prefetch (the next tile's loads are in flight while the
// current tile is multiplied). Shared tiles keep the global layout of each operand (row- or
// column-major), so the stores are contiguous and the WMMA loads pick the matching layout.
//
// Engines (the math on a shared tile):
//   WmmaEngine  bf16 / fp16 (m16n16k16) and tf32 for float (m16n16k8), float accumulators;
//   SimtEngine  exact float / double FMA, 8 x 4 outputs per thread.
// Epilogues read the accumulator tile from shared memory (it aliases the operand tiles after the
// main loop), one element per thread per step, consecutive threads on consecutive columns.
#include <mma.h>

#include "common.cuh"

namespace fastme {
namespace kernels {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 32;
constexpr int kGemmThreads = 128;

// Operand description. A is rows x depth, B is depth x cols; `a_depth_major` etc. are template
// parameters of the kernel: element (r, k) of A is at a[r * lda + k] when A is row-major
// (contiguous along the depth) and at a[r + k * lda] otherwise; element (k, c) of B is at
// b[c * ldb + k] when B is column-major (contiguous along the depth) and at b[k * ldb + c] otherwise.
template <typename T>
struct GemmArgs {
  const T* a;
  long long lda, a_batch;  // leading dimension, offset between batches (elements)
  const T* b;
  long long ldb, b_batch;
  long long rows, cols, depth;
  long long splits;           // depth slices per batch (blockIdx.z = batch * splits + split)
  long long depth_per_split;  // multiple of kTileK
};

// Depth per split of an unsplit GEMM over `depth`.
inline long long round_up_tile(long long depth) { return ceil_div(depth, kTileK) * kTileK; }

namespace gemm_detail {

// Shared-memory geometry of one operand tile stored `contig`-major with `extent` elements along
// the contiguous dimension and `lines` lines; padded so that WMMA's 16-byte ldm rule holds and
// strided accesses spread over banks.
template <typename T, bool TC>
struct Pad {
  static constexpr int value = TC ? static_cast<int>(16 / sizeof(T)) : 1;
};

template <typename T, bool TC, bool A_ROW, bool B_COL>
struct Layout {
  using Acc = acc_t<T>;
  static constexpr int kPad = Pad<T, TC>::value;
  // A row-major: kTileM lines of kTileK; column-major: kTileK lines of kTileM.
  static constexpr int kLda = A_ROW ? kTileK + kPad : kTileM + kPad;
  static constexpr int kALines = A_ROW ? kTileM : kTileK;
  // B column-major: kTileN lines of kTileK; row-major: kTileK lines of kTileN.
  static constexpr int kLdb = B_COL ? kTileK + kPad : kTileN + kPad;
  static constexpr int kBLines = B_COL ? kTileN : kTileK;
  static constexpr int kLdc = TC ? kTileN + 4 : kTileN + 1;
  static constexpr int kABytes = kALines * kLda * static_cast<int>(sizeof(T));
  static constexpr int kBBytes = kBLines * kLdb * static_cast<int>(sizeof(T));
  static constexpr int kCBytes = kTileM * kLdc * static_cast<int>(sizeof(Acc));
  static constexpr int kBytes = kABytes + kBBytes > kCBytes ? kABytes + kBBytes : kCBytes;
  static_assert(kABytes % 32 == 0, "B tile must start 32-byte aligned for WMMA");
  static_assert(kBytes <= 48 * 1024, "static shared memory limit");

  __device__ static T a_at(const T* as, int r, int k) { return A_ROW ? as[r * kLda + k] : as[k * kLda + r]; }
  __device__ static T b_at(const T* bs, int k, int c) { return B_COL ? bs[c * kLdb + k] : bs[k * kLdb + c]; }
};

template <typename T> struct WmmaElem;
template <> struct WmmaElem<__nv_bfloat16> { using type = __nv_bfloat16; static constexpr int kStep = 16; };
template <> struct WmmaElem<__half> { using type = __half; static constexpr int kStep = 16; };
template <> struct WmmaElem<float> { using type = nvcuda::wmma::precision::tf32; static constexpr int kStep = 8; };

template <typename T, bool A_ROW, bool B_COL>
struct WmmaEngine {
  using L = Layout<T, true, A_ROW, B_COL>;
  using E = typename WmmaElem<T>::type;
  static constexpr int kStep = WmmaElem<T>::kStep;
  // <= 170 registers: 12 warps per SM (the tf32 weight-gradient kernel spills 8 bytes at that cap;
  // uncapped, the tf32 kernels take ~250 registers and 8 warps).
  static constexpr int kMinBlocks = 3;
  using ALayout = std::conditional_t<A_ROW, nvcuda::wmma::row_major, nvcuda::wmma::col_major>;
  using BLayout = std::conditional_t<B_COL, nvcuda::wmma::col_major, nvcuda::wmma::row_major>;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, kStep, float> acc[2][2];

  __device__ void init() {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  __device__ void compute(const T* as, const T* bs) {
    namespace wmma = nvcuda::wmma;
    const int warp = threadIdx.x / 32;
    const int r0 = (warp / 2) * 32, c0 = (warp % 2) * 32;
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += kStep) {
      wmma::fragment<wmma::matrix_a, 16, 16, kStep, E, ALayout> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, kStep, E, BLayout> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = r0 + i * 16;
        wmma::load_matrix_sync(fa[i], A_ROW ? as + r * L::kLda + kk : as + kk * L::kLda + r, L::kLda);
        if constexpr (std::is_same_v<T, float>) {
#pragma unroll
          for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
        }
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int c = c0 + j * 16;
        wmma::load_matrix_sync(fb[j], B_COL ? bs + c * L::kLdb + kk : bs + kk * L::kLdb + c, L::kLdb);
        if constexpr (std::is_same_v<T, float>) {
#pragma unroll
          for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }

  __device__ void store(float* cs) {
    const int warp = threadIdx.x / 32;
    const int r0 = (warp / 2) * 32, c0 = (warp % 2) * 32;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(cs + (r0 + i * 16) * L::kLdc + c0 + j * 16, acc[i][j],
                                        L::kLdc, nvcuda::wmma::mem_row_major);
  }
};

// Thread (ty, tx) of a 8 x 16 grid owns rows ty + 8i (i < 8) and columns tx + 16j (j < 4):
// per depth step 8 + 4 shared loads (the 8 shared by half-warps) for 32 FMAs.
template <typename T, bool A_ROW, bool B_COL>
struct SimtEngine {
  using L = Layout<T, false, A_ROW, B_COL>;
  static constexpr int kMinBlocks = sizeof(T) == 8 ? 2 : 3;
  T acc[8][4];

  __device__ void init() {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
  }

  __device__ void compute(const T* as, const T* bs) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll 8
    for (int kk = 0; kk < kTileK; ++kk) {
      T a[8], b[4];
#pragma unroll
      for (int i = 0; i < 8; ++i) a[i] = L::a_at(as, ty + 8 * i, kk);
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = L::b_at(bs, kk, tx + 16 * j);
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
  }

  __device__ void store(T* cs) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) cs[(ty + 8 * i) * L::kLdc + tx + 16 * j] = acc[i][j];
  }
};

}  // namespace gemm_detail

// ROWSUM: also reduce A's rows over the depth (epi.rowsum(batch, split, r, sum) from the blocks of
// the first column tile); only for column-major A, where each thread's loads stay on one row.
template <class Engine, typename T, bool A_ROW, bool B_COL, bool ROWSUM, class Epi>
__global__ void __launch_bounds__(kGemmThreads, Engine::kMinBlocks)
gemm_kernel(GemmArgs<T> args, Epi epi) {
  using L = typename Engine::L;
  using Acc = acc_t<T>;
  static_assert(!ROWSUM || !A_ROW, "row sums need a column-major A");
  constexpr int kLoadsA = kTileM * kTileK / kGemmThreads;
  constexpr int kLoadsB = kTileK * kTileN / kGemmThreads;
  __shared__ __align__(128) unsigned char smem[L::kBytes];
  __shared__ Acc rowsum_smem[ROWSUM ? kTileM : 1];
  T* as = reinterpret_cast<T*>(smem);
  T* bs = reinterpret_cast<T*>(smem + L::kABytes);
  Acc* cs = reinterpret_cast<Acc*>(smem);

  const int tid = threadIdx.x;
  const long long row0 = static_cast<long long>(blockIdx.x) * kTileM;
  const long long col0 = static_cast<long long>(blockIdx.y) * kTileN;
  const long long batch = blockIdx.z / args.splits;
  const long long split = blockIdx.z - batch * args.splits;
  const long long k_begin = split * args.depth_per_split;
  const long long k_end = min(args.depth, k_begin + args.depth_per_split);
  const T* a = args.a + batch * args.a_batch;
  const T* b = args.b + batch * args.b_batch;

  // Fixed per-thread coordinates inside the tiles (contiguous dimension across the threads).
  // A row-major: r = tid / K + 4q, k = tid % K.  A column-major: r = tid % M, k = tid / M + 2q.
  const int a_r = A_ROW ? tid / kTileK : tid % kTileM;
  const int a_k = A_ROW ? tid % kTileK : tid / kTileM;
  constexpr int kAStep = A_ROW ? kGemmThreads / kTileK : kGemmThreads / kTileM;
  // B column-major: c = tid / K + 4q, k = tid % K.  B row-major: c = tid % N, k = tid / N + 2q.
  const int b_c = B_COL ? tid / kTileK : tid % kTileN;
  const int b_k = B_COL ? tid % kTileK : tid / kTileN;
  constexpr int kBStep = B_COL ? kGemmThreads / kTileK : kGemmThreads / kTileN;

  // Within a tile, offsets from the tile's corner fit in 32 bits (the host checks the leading
  // dimensions); only the corner itself is 64-bit. Keeps the 32 per-load offsets cheap.
  const T* a_corner = a + (A_ROW ? row0 * args.lda : row0);
  const T* b_corner = b + (B_COL ? col0 * args.ldb : col0);
  const int lda = static_cast<int>(args.lda), ldb = static_cast<int>(args.ldb);
  const long long rows_left = args.rows - row0, cols_left = args.cols - col0;

  T ra[kLoadsA], rb[kLoadsB];
  Acc rowsum = Acc(0);

  auto load_tiles = [&](long long k0) {
    const long long k_left = k_end - k0;
    const T* at = a_corner + (A_ROW ? k0 : k0 * args.lda);
    const T* bt = b_corner + (B_COL ? k0 : k0 * args.ldb);
#pragma unroll
    for (int q = 0; q < kLoadsA; ++q) {
      const int r = A_ROW ? a_r + q * kAStep : a_r;
      const int k = A_ROW ? a_k : a_k + q * kAStep;
      ra[q] = (r < rows_left && k < k_left) ? at[A_ROW ? r * lda + k : r + k * lda] : T(0);
    }
#pragma unroll
    for (int q = 0; q < kLoadsB; ++q) {
      const int c = B_COL ? b_c + q * kBStep : b_c;
      const int k = B_COL ? b_k : b_k + q * kBStep;
      rb[q] = (c < cols_left && k < k_left) ? bt[B_COL ? c * ldb + k : k * ldb + c] : T(0);
    }
  };
  auto store_tiles = [&]() {
#pragma unroll
    for (int q = 0; q < kLoadsA; ++q) {
      if (A_ROW) as[(a_r + q * kAStep) * L::kLda + a_k] = ra[q];
      else as[(a_k + q * kAStep) * L::kLda + a_r] = ra[q];
      if constexpr (ROWSUM) rowsum += to_acc(ra[q]);
    }
#pragma unroll
    for (int q = 0; q < kLoadsB; ++q) {
      if (B_COL) bs[(b_c + q * kBStep) * L::kLdb + b_k] = rb[q];
      else bs[(b_k + q * kBStep) * L::kLdb + b_c] = rb[q];
    }
  };

  Engine engine;
  engine.init();
  const long long tiles = k_end > k_begin ? (k_end - k_begin + kTileK - 1) / kTileK : 0;
  if (tiles > 0) load_tiles(k_begin);
  for (long long t = 0; t < tiles; ++t) {
    store_tiles();
    __syncthreads();
    if (t + 1 < tiles) load_tiles(k_begin + (t + 1) * kTileK);  // in flight during the math
    engine.compute(as, bs);
    __syncthreads();  // everyone is done with the tile before it is overwritten
  }
  engine.store(cs);  // aliases the operand tiles: safe after the loop's last barrier
  __syncthreads();
#pragma unroll 1
  for (int e = tid; e < kTileM * kTileN; e += kGemmThreads) {
    const int r = e / kTileN, c = e - r * kTileN;
    if (row0 + r < args.rows && col0 + c < args.cols)
      epi(batch, split, row0 + r, col0 + c, cs[r * L::kLdc + c]);
  }
  if constexpr (ROWSUM) {
    // Threads tid and tid + kTileM loaded the same row.
    if (tid >= kTileM) rowsum_smem[tid - kTileM] = rowsum;
    __syncthreads();
    if (tid < kTileM && blockIdx.y == 0 && row0 + tid < args.rows)
      epi.rowsum(batch, split, row0 + tid, rowsum + rowsum_smem[tid]);
  }
}

// Launches C = A x B for every batch and depth split with the engine chosen by the element type
// (and allow_tf32 for float).
template <typename T, bool A_ROW, bool B_COL, bool ROWSUM, class Epi>
void gemm(const Launch& launch, const GemmArgs<T>& args, long long batches, bool allow_tf32,
          const Epi& epi, const char* name) {
  if (args.rows == 0 || args.cols == 0 || batches == 0) return;
  const long long row_tiles = ceil_div(args.rows, kTileM);
  const long long col_tiles = ceil_div(args.cols, kTileN);
  const long long z = batches * args.splits;
  if (col_tiles > 65535 || z > 65535 || row_tiles > 0x7fffffffLL)
    throw std::invalid_argument(std::string(name) + ": problem too large for the grid");
  // In-tile offsets are 32-bit: up to kTileM (or kTileK) lines of a leading dimension.
  if (args.lda > (1LL << 31) / kTileM || args.ldb > (1LL << 31) / kTileN)
    throw std::invalid_argument(std::string(name) + ": leading dimension too large");
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles),
                  static_cast<unsigned>(z));
  using namespace gemm_detail;
  if constexpr (std::is_same_v<T, double>) {
    gemm_kernel<SimtEngine<T, A_ROW, B_COL>, T, A_ROW, B_COL, ROWSUM>
        <<<grid, kGemmThreads, 0, launch.stream>>>(args, epi);
  } else if constexpr (std::is_same_v<T, float>) {
    if (allow_tf32) {
      gemm_kernel<WmmaEngine<T, A_ROW, B_COL>, T, A_ROW, B_COL, ROWSUM>
          <<<grid, kGemmThreads, 0, launch.stream>>>(args, epi);
    } else {
      gemm_kernel<SimtEngine<T, A_ROW, B_COL>, T, A_ROW, B_COL, ROWSUM>
          <<<grid, kGemmThreads, 0, launch.stream>>>(args, epi);
    }
  } else {
    gemm_kernel<WmmaEngine<T, A_ROW, B_COL>, T, A_ROW, B_COL, ROWSUM>
        <<<grid, kGemmThreads, 0, launch.stream>>>(args, epi);
  }
  cuda_check_launch(name);
}

}  // namespace kernels
}  // namespace fastme
