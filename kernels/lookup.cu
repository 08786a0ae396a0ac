// Grouped multi-set lookup: forward gather and the two table-gradient scatters (atomic, sorted).
//
// A table row holds the M sets of one feature value contiguously (M*K elements). Work items are
// (pair, vector) with pair = b * N + i and the vector running over the row in V-element accesses
// (V*sizeof(T) up to 16 bytes, V | K so that no access straddles two sets): consecutive threads
// read consecutive 16-byte pieces of a row and write K-long runs of the output.
#include "common.cuh"
#include "lookup.h"

namespace fastme {
namespace kernels {
namespace {

constexpr int kThreads = 256;
// Accesses per thread issued before the first store: keeps several row loads in flight.
constexpr int kUnroll = 4;
constexpr unsigned kFullMask = 0xffffffffu;

// I: type of the flat work index (32-bit when the work fits, which keeps divisions cheap).
template <typename T, int V, typename I>
__global__ void __launch_bounds__(kThreads)
lookup_forward_kernel(const T* __restrict__ table, IndexArgs ix, int num_sets, int kv_per_set,
                      T* __restrict__ out, I total) {
  const I mkv = static_cast<I>(num_sets) * kv_per_set;
  const I n = static_cast<I>(ix.num_fields);
  const I step = static_cast<I>(gridDim.x) * kThreads * kUnroll;
  for (I base = static_cast<I>(blockIdx.x) * kThreads * kUnroll + threadIdx.x; base < total;
       base += step) {
    Vec<T, V> val[kUnroll];
    I dst[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const I e = base + static_cast<I>(u) * kThreads;
      if (e < total) {
        const I p = e / mkv, c = e - p * mkv;
        const I b = p / n, i = p - b * n;
        const long long row = table_row(ix, b, i);
        val[u] = load_vec<T, V>(table + (row * static_cast<long long>(mkv) + c) * V);
        const I m = c / kv_per_set, kv = c - m * kv_per_set;
        dst[u] = ((b * num_sets + m) * n + i) * kv_per_set + kv;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + static_cast<I>(u) * kThreads < total)
        store_vec<T, V>(out + static_cast<long long>(dst[u]) * V, val[u]);
    }
  }
}

template <typename T, int V, typename I>
__global__ void __launch_bounds__(kThreads)
scatter_rows_atomic_kernel(const T* __restrict__ src, IndexArgs ix, int num_sets, int kv_per_set,
                           T* __restrict__ grad_table, I total) {
  const I mkv = static_cast<I>(num_sets) * kv_per_set;
  const I n = static_cast<I>(ix.num_fields);
  const I step = static_cast<I>(gridDim.x) * kThreads * kUnroll;
  for (I base = static_cast<I>(blockIdx.x) * kThreads * kUnroll + threadIdx.x; base < total;
       base += step) {
    Vec<T, V> val[kUnroll];
    long long dst[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const I e = base + static_cast<I>(u) * kThreads;
      if (e < total) {
        const I p = e / mkv, c = e - p * mkv;
        const I b = p / n, i = p - b * n;
        const I m = c / kv_per_set, kv = c - m * kv_per_set;
        const I from = ((b * num_sets + m) * n + i) * kv_per_set + kv;
        val[u] = load_vec<T, V>(src + static_cast<long long>(from) * V);
        dst[u] = (table_row(ix, b, i) * static_cast<long long>(mkv) + c) * V;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + static_cast<I>(u) * kThreads < total) {
#pragma unroll
        for (int q = 0; q < V; ++q) atomicAdd(grad_table + dst[u] + q, val[u].v[q]);
      }
    }
  }
}

// ---- sorted (deterministic) scatter ---------------------------------------------------------------
//
// The sorted positions are cut into chunks of kSegmentChunk (= warp size); one warp per chunk,
// lanes over the row's vectors. A chunk sums each run of equal rows it holds ("piece"):
//   - a piece that starts in this chunk and ends in it is the whole segment: written to the row;
//   - the first piece, when its run started in an earlier chunk, goes to head[chunk];
//   - the last piece, when its run started here and goes on, goes to tail[chunk].
// A second kernel completes each run that crosses chunks: tail[owner] + head[owner+1] + ... in
// chunk order. Every sum has a fixed order, so the result does not depend on scheduling, and a
// hot row costs its owner one head read per 32 duplicates rather than 32 serial row reads.
constexpr int kSegmentWarps = 4;

// Where the sum of one piece goes (see above). continues_before: the run started in an earlier
// chunk; ends_here: the run's last position is in this chunk.
template <typename T, int V>
__device__ __forceinline__ void flush_piece(const acc_t<T> (&acc)[V], long long row,
                                            bool continues_before, bool ends_here,
                                            long long chunk, long long mkv, long long c,
                                            acc_t<T>* __restrict__ head, acc_t<T>* __restrict__ tail,
                                            T* __restrict__ grad_table) {
  if (continues_before) {
#pragma unroll
    for (int q = 0; q < V; ++q) head[(chunk * mkv + c) * V + q] = acc[q];
  } else if (ends_here) {
    Vec<T, V> out;
#pragma unroll
    for (int q = 0; q < V; ++q) out.v[q] = from_acc<T>(acc[q]);
    store_vec<T, V>(grad_table + (row * mkv + c) * V, out);
  } else {
#pragma unroll
    for (int q = 0; q < V; ++q) tail[(chunk * mkv + c) * V + q] = acc[q];
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kSegmentWarps * 32, 1)
segment_pieces_kernel(const T* __restrict__ src, const long long* __restrict__ sorted_rows,
                      const long long* __restrict__ perm, long long num_pairs, long long num_fields,
                      int num_sets, int kv_per_set, long long num_chunks,
                      acc_t<T>* __restrict__ head, acc_t<T>* __restrict__ tail,
                      T* __restrict__ grad_table) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const long long chunk = static_cast<long long>(blockIdx.x) * kSegmentWarps + (threadIdx.x >> 5);
  if (chunk >= num_chunks) return;  // uniform over the warp
  const long long s0 = chunk * kSegmentChunk;
  const int len = static_cast<int>(min(kSegmentChunk, num_pairs - s0));
  // Lane l holds sorted position s0 + l; the loop below broadcasts them with shuffles.
  const long long my_row = lane < len ? sorted_rows[s0 + lane] : -1;
  const long long my_pair = lane < len ? perm[s0 + lane] : 0;
  const long long n = num_fields;
  // Offset (in vectors) of pair (b, i) in src [B, M, N, K/V], without the set / column part.
  const long long my_pair_off = ((my_pair / n) * num_sets * n + my_pair % n) * kv_per_set;
  const long long first_row = __shfl_sync(kFullMask, my_row, 0);
  const bool head_continues = s0 > 0 && sorted_rows[s0 - 1] == first_row;
  const long long next_row = s0 + len < num_pairs ? sorted_rows[s0 + len] : -1;
  const long long mkv = static_cast<long long>(num_sets) * kv_per_set;

  // Every lane runs every iteration (shuffles need the full warp); `active` guards the columns.
  for (long long c0 = 0; c0 < mkv; c0 += 32) {
    const long long c = c0 + lane;
    const bool active = c < mkv;
    const long long m = c / kv_per_set;
    const long long col_off = m * n * kv_per_set + (c - m * kv_per_set);
    A acc[V];
#pragma unroll
    for (int q = 0; q < V; ++q) acc[q] = A(0);

    long long cur = first_row;
    int start = 0;
    for (int s = 0; s < len; ++s) {
      const long long row = __shfl_sync(kFullMask, my_row, s);
      const long long pair_off = __shfl_sync(kFullMask, my_pair_off, s);
      if (row != cur) {
        if (active)  // the piece [start, s) ends inside the chunk
          flush_piece<T, V>(acc, cur, start == 0 && head_continues, true, chunk, mkv, c, head,
                            tail, grad_table);
#pragma unroll
        for (int q = 0; q < V; ++q) acc[q] = A(0);
        cur = row;
        start = s;
      }
      if (active) {
        const Vec<T, V> g = load_vec<T, V>(src + (pair_off + col_off) * V);
#pragma unroll
        for (int q = 0; q < V; ++q) acc[q] += to_acc(g.v[q]);
      }
    }
    if (active)  // the last piece [start, len) ends here unless the next chunk continues it
      flush_piece<T, V>(acc, cur, start == 0 && head_continues, next_row != cur, chunk, mkv, c,
                        head, tail, grad_table);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kSegmentWarps * 32)
segment_carry_kernel(const long long* __restrict__ sorted_rows, long long num_pairs, int num_sets,
                     int kv_per_set, long long num_chunks, const acc_t<T>* __restrict__ head,
                     const acc_t<T>* __restrict__ tail, T* __restrict__ grad_table) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const long long chunk = static_cast<long long>(blockIdx.x) * kSegmentWarps + (threadIdx.x >> 5);
  if (chunk >= num_chunks) return;
  const long long s0 = chunk * kSegmentChunk;
  const long long s1 = min(s0 + kSegmentChunk, num_pairs);
  const long long first = sorted_rows[s0];
  const long long last = sorted_rows[s1 - 1];
  const bool head_continues = s0 > 0 && sorted_rows[s0 - 1] == first;
  const bool last_starts_here = !(first == last && head_continues);
  const bool last_continues = s1 < num_pairs && sorted_rows[s1] == last;
  if (!last_starts_here || !last_continues) return;  // uniform over the warp
  const long long mkv = static_cast<long long>(num_sets) * kv_per_set;
  for (long long c = lane; c < mkv; c += 32) {
    A acc[V];
#pragma unroll
    for (int q = 0; q < V; ++q) acc[q] = tail[(chunk * mkv + c) * V + q];
    // A later chunk holds a piece of this run exactly when it starts with the run's row.
    for (long long ch = chunk + 1; ch < num_chunks && sorted_rows[ch * kSegmentChunk] == last; ++ch) {
#pragma unroll
      for (int q = 0; q < V; ++q) acc[q] += head[(ch * mkv + c) * V + q];
    }
    Vec<T, V> out;
#pragma unroll
    for (int q = 0; q < V; ++q) out.v[q] = from_acc<T>(acc[q]);
    store_vec<T, V>(grad_table + (last * mkv + c) * V, out);
  }
}

// Launches kernel<I> with a 32-bit work index when the flat work fits comfortably.
template <typename Fn>
void with_index_type(long long total, Fn&& fn) {
  if (total < (1LL << 31)) {
    fn(static_cast<unsigned int>(0));
  } else {
    fn(static_cast<unsigned long long>(0));
  }
}

}  // namespace

void lookup_forward(const Launch& launch, DType dtype, const void* table, const IndexArgs& ix,
                    int num_sets, int dim, void* out) {
  const long long pairs = ix.batch * ix.num_fields;
  if (pairs == 0 || num_sets == 0 || dim == 0) return;
  DeviceGuard guard(launch.device);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int vb = vector_bytes(sizeof(T), static_cast<long long>(dim) * sizeof(T), {table, out});
    dispatch_vec<T>(vb, [&](auto v) {
      constexpr int V = decltype(v)::value;
      const int kv = dim / V;
      const long long total = pairs * num_sets * kv;
      with_index_type(total, [&](auto itag) {
        using I = decltype(itag);
        const unsigned grid = stride_grid(total, kThreads * kUnroll, launch.device);
        lookup_forward_kernel<T, V, I><<<grid, kThreads, 0, launch.stream>>>(
            static_cast<const T*>(table), ix, num_sets, kv, static_cast<T*>(out),
            static_cast<I>(total));
        cuda_check_launch("lookup_forward_kernel");
      });
    });
  });
}

void scatter_rows_atomic(const Launch& launch, DType dtype, const void* src, const IndexArgs& ix,
                         int num_sets, int dim, void* grad_table) {
  if (dtype != DType::kFloat32 && dtype != DType::kFloat64)
    throw std::invalid_argument("scatter_rows_atomic supports float32 and float64 only");
  const long long pairs = ix.batch * ix.num_fields;
  if (pairs == 0 || num_sets == 0 || dim == 0) return;
  DeviceGuard guard(launch.device);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const int vb = vector_bytes(sizeof(T), static_cast<long long>(dim) * sizeof(T), {src});
    dispatch_vec<T>(vb, [&](auto v) {
      constexpr int V = decltype(v)::value;
      const int kv = dim / V;
      const long long total = pairs * num_sets * kv;
      with_index_type(total, [&](auto itag) {
        using I = decltype(itag);
        const unsigned grid = stride_grid(total, kThreads * kUnroll, launch.device);
        scatter_rows_atomic_kernel<T, V, I><<<grid, kThreads, 0, launch.stream>>>(
            static_cast<const T*>(src), ix, num_sets, kv, static_cast<T*>(grad_table),
            static_cast<I>(total));
        cuda_check_launch("scatter_rows_atomic_kernel");
      });
    });
  };
  if (dtype == DType::kFloat32) run(float{});
  else run(double{});
}

void scatter_rows_sorted(const Launch& launch, DType dtype, const void* src,
                         const long long* sorted_rows, const long long* perm, long long num_pairs,
                         long long num_fields, int num_sets, int dim, void* head, void* tail,
                         void* grad_table) {
  if (num_pairs == 0 || num_sets == 0 || dim == 0) return;
  DeviceGuard guard(launch.device);
  const long long chunks = ceil_div(num_pairs, kSegmentChunk);
  const unsigned grid = static_cast<unsigned>(ceil_div(chunks, kSegmentWarps));
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const int vb =
        vector_bytes(sizeof(T), static_cast<long long>(dim) * sizeof(T), {src, grad_table});
    dispatch_vec<T>(vb, [&](auto v) {
      constexpr int V = decltype(v)::value;
      const int kv = dim / V;
      segment_pieces_kernel<T, V><<<grid, kSegmentWarps * 32, 0, launch.stream>>>(
          static_cast<const T*>(src), sorted_rows, perm, num_pairs, num_fields, num_sets, kv,
          chunks, static_cast<A*>(head), static_cast<A*>(tail), static_cast<T*>(grad_table));
      cuda_check_launch("segment_pieces_kernel");
      segment_carry_kernel<T, V><<<grid, kSegmentWarps * 32, 0, launch.stream>>>(
          sorted_rows, num_pairs, num_sets, kv, chunks, static_cast<const A*>(head),
          static_cast<const A*>(tail), static_cast<T*>(grad_table));
      cuda_check_launch("segment_carry_kernel");
    });
  });
}

}  // namespace kernels
}  // namespace fastme
