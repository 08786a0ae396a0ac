// Fused lookup + FM / field-weighted pooling, forward and backward. The [B, M, N, K] embeddings
// are never written in the forward: each block gathers the rows it needs straight from the table.
//
// FM: one thread per (sample, V-element vector of the M*K pooled values), looping over fields with
// several row loads in flight; the row read is contiguous across the threads of a sample.
//
// Field-weighted (FwFM): per set m the pooled vector is out_k = sum_i e_ik (Q e)_ik, a small
// matrix product per sample. A block owns one set, a tile of `sb` samples and a chunk of `kc`
// columns: it stages the tile's embeddings E[field][sample*kc + k] (accumulation type) and the
// set's N x N matrix in shared memory, then each thread computes whole columns with an 8-field
// register tile (three shared loads per eight FMAs). The weight gradient is a per-block N x N
// partial with a 4x4 register tile per thread, reduced over blocks in a fixed order.
#include "common.cuh"
#include "pooling.h"

namespace fastme {
namespace kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kFieldUnroll = 4;  // row loads in flight per thread in the FM kernels

// ---- FM ------------------------------------------------------------------------------------------

// One work item = (sample b, vector c of the row's M*K/V vectors). I: flat index type.
template <typename T, int V, typename I>
__global__ void __launch_bounds__(kThreads)
fm_forward_kernel(const T* __restrict__ table, IndexArgs ix, int kv_per_row, T* __restrict__ out,
                  I total) {
  using A = acc_t<T>;
  const I mkv = static_cast<I>(kv_per_row);
  const long long n = ix.num_fields;
  for (I e = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<I>(gridDim.x) * kThreads) {
    const I b = e / mkv, c = e - b * mkv;
    A sum[V], sq[V];
#pragma unroll
    for (int q = 0; q < V; ++q) sum[q] = sq[q] = A(0);
    for (long long i0 = 0; i0 < n; i0 += kFieldUnroll) {
      Vec<T, V> val[kFieldUnroll];
#pragma unroll
      for (int u = 0; u < kFieldUnroll; ++u) {
        if (i0 + u < n)
          val[u] = load_vec<T, V>(table + (table_row(ix, b, i0 + u) * kv_per_row + c) * V);
      }
#pragma unroll
      for (int u = 0; u < kFieldUnroll; ++u) {
        if (i0 + u < n) {
#pragma unroll
          for (int q = 0; q < V; ++q) {
            const A x = to_acc(val[u].v[q]);
            sum[q] += x;
            sq[q] += x * x;
          }
        }
      }
    }
    Vec<T, V> res;
#pragma unroll
    for (int q = 0; q < V; ++q) res.v[q] = from_acc<T>(A(0.5) * (sum[q] * sum[q] - sq[q]));
    store_vec<T, V>(out + static_cast<long long>(e) * V, res);
  }
}

// dL/de_i = g * (S - e_i) with S = sum_j e_j (recomputed: one extra pass over rows that are
// mostly still in L2, instead of saving [B, M, K] from the forward).
// ATOMIC: add into grad_table [R, M, K]; else store per pair into dest [B, M, N, K].
template <typename T, int V, bool ATOMIC, typename I>
__global__ void __launch_bounds__(kThreads)
fm_backward_kernel(const T* __restrict__ grad, const T* __restrict__ table, IndexArgs ix,
                   int num_sets, int kv_per_set, T* __restrict__ dest, I total) {
  using A = acc_t<T>;
  const I mkv = static_cast<I>(num_sets) * kv_per_set;
  const long long n = ix.num_fields;
  for (I e = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<I>(gridDim.x) * kThreads) {
    const I b = e / mkv, c = e - b * mkv;
    const Vec<T, V> gv = load_vec<T, V>(grad + static_cast<long long>(e) * V);
    A sum[V];
#pragma unroll
    for (int q = 0; q < V; ++q) sum[q] = A(0);
    for (long long i0 = 0; i0 < n; i0 += kFieldUnroll) {
      Vec<T, V> val[kFieldUnroll];
#pragma unroll
      for (int u = 0; u < kFieldUnroll; ++u) {
        if (i0 + u < n)
          val[u] = load_vec<T, V>(table + (table_row(ix, b, i0 + u) * mkv + c) * V);
      }
#pragma unroll
      for (int u = 0; u < kFieldUnroll; ++u) {
        if (i0 + u < n) {
#pragma unroll
          for (int q = 0; q < V; ++q) sum[q] += to_acc(val[u].v[q]);
        }
      }
    }
    const I m = c / kv_per_set, kv = c - m * kv_per_set;
    for (long long i0 = 0; i0 < n; i0 += kFieldUnroll) {
      Vec<T, V> val[kFieldUnroll];
      long long row[kFieldUnroll];
#pragma unroll
      for (int u = 0; u < kFieldUnroll; ++u) {
        if (i0 + u < n) {
          row[u] = table_row(ix, b, i0 + u);
          val[u] = load_vec<T, V>(table + (row[u] * mkv + c) * V);
        }
      }
#pragma unroll
      for (int u = 0; u < kFieldUnroll; ++u) {
        if (i0 + u >= n) continue;
        Vec<T, V> d;
#pragma unroll
        for (int q = 0; q < V; ++q) d.v[q] = from_acc<T>(to_acc(gv.v[q]) * (sum[q] - to_acc(val[u].v[q])));
        if constexpr (ATOMIC) {
#pragma unroll
          for (int q = 0; q < V; ++q) atomicAdd(dest + (row[u] * mkv + c) * V + q, d.v[q]);
        } else {
          const long long to = ((static_cast<long long>(b) * num_sets + m) * n + i0 + u) * kv_per_set + kv;
          store_vec<T, V>(dest + to * V, d);
        }
      }
    }
  }
}

// ---- field-weighted pooling ----------------------------------------------------------------------

constexpr int kFwThreads = 128;
constexpr int kFieldTile = kFwfmFieldPad;  // fields per register tile (and row padding of E and Q)

// Shape of a block's tile, chosen on the host (fw_tile) to fit the shared-memory budget.
struct FwTile {
  int sb;      // samples per tile
  int kc;      // columns (of K) per tile
  int es;      // row stride of E: sb * kc rounded up to odd (conflict-free strided field rows)
  int ne;      // rows of E: N rounded up to kFieldTile, padding rows zero
  int np;      // row stride of Q: N rounded up to kFieldTile, padding zero
  int q_smem;  // Q staged in shared memory (else read from global memory)
};

__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char smem[];
  return smem;
}

template <typename A>
struct FwSmem {
  long long* rows;  // [sb * N] table rows of the tile's pairs
  A* e;             // [ne][es]
  A* q;             // [N][np] when staged
  A* g;             // [sb * kc] output gradient of the tile
};

inline long long round_up(long long x, long long m) { return (x + m - 1) / m * m; }

template <typename A>
__host__ __device__ inline long long fw_rows_bytes(const FwTile& t, long long n) {
  return (t.sb * n * 8 + 15) / 16 * 16;
}

template <typename A>
__device__ FwSmem<A> fw_smem(const FwTile& t, long long n) {
  unsigned char* base = dynamic_smem();
  FwSmem<A> s;
  s.rows = reinterpret_cast<long long*>(base);
  s.e = reinterpret_cast<A*>(base + fw_rows_bytes<A>(t, n));
  s.q = s.e + static_cast<long long>(t.ne) * t.es;
  s.g = s.q + (t.q_smem ? n * t.np : 0);
  return s;
}

template <typename A>
size_t fw_smem_bytes(const FwTile& t, long long n) {
  return fw_rows_bytes<A>(t, n) +
         sizeof(A) * (static_cast<long long>(t.ne) * t.es + (t.q_smem ? n * t.np : 0) +
                      static_cast<long long>(t.sb) * t.kc);
}

// Stage the tile (samples b0 .. b0+sn, columns k0 .. k0+kn of set m) into shared memory: rows,
// then E (zero outside the tile), the output gradient when `grad` is given, and Q when `q` is given
// and staged. Ends with a barrier; callers must not be reading the previous tile any more.
template <typename T>
__device__ void fw_load_tile(const FwSmem<acc_t<T>>& s, const FwTile& t, const T* __restrict__ table,
                             const IndexArgs& ix, int num_sets, int dim, int m, long long b0, int sn,
                             int k0, int kn, const T* __restrict__ grad,
                             const acc_t<T>* __restrict__ q) {
  using A = acc_t<T>;
  const long long n = ix.num_fields;
  const long long mk = static_cast<long long>(num_sets) * dim;
  for (long long e = threadIdx.x; e < t.sb * n; e += blockDim.x) {
    const long long smp = e / n, j = e - smp * n;
    s.rows[e] = smp < sn ? table_row(ix, b0 + smp, j) : 0;
  }
  if (q != nullptr && t.q_smem) {
    const A* qm = q + m * n * t.np;
    for (long long e = threadIdx.x; e < n * t.np; e += blockDim.x) s.q[e] = qm[e];
  }
  if (grad != nullptr) {
    for (int e = threadIdx.x; e < t.sb * t.kc; e += blockDim.x) {
      const int smp = e / t.kc, kk = e - smp * t.kc;
      s.g[e] = (smp < sn && kk < kn) ? to_acc(grad[(b0 + smp) * mk + m * dim + k0 + kk]) : A(0);
    }
  }
  __syncthreads();
  // kk fastest: consecutive threads read consecutive columns of one table row.
  const long long count = static_cast<long long>(t.ne) * t.sb * t.kc;
  for (long long e = threadIdx.x; e < count; e += blockDim.x) {
    const int kk = static_cast<int>(e % t.kc);
    const long long rest = e / t.kc;
    const int smp = static_cast<int>(rest % t.sb);
    const long long j = rest / t.sb;
    A val = A(0);
    if (j < n && smp < sn && kk < kn)
      val = to_acc(table[s.rows[smp * n + j] * mk + m * dim + k0 + kk]);
    s.e[j * t.es + smp * t.kc + kk] = val;
  }
  __syncthreads();
}

// acc[u] += q[u] * x for the kFieldTile consecutive entries q[0..7] (16-byte aligned).
__device__ __forceinline__ void axpy_tile(float (&acc)[kFieldTile], const float* q, float x) {
  const float4 a = *reinterpret_cast<const float4*>(q);
  const float4 b = *reinterpret_cast<const float4*>(q + 4);
  acc[0] += a.x * x; acc[1] += a.y * x; acc[2] += a.z * x; acc[3] += a.w * x;
  acc[4] += b.x * x; acc[5] += b.y * x; acc[6] += b.z * x; acc[7] += b.w * x;
}
__device__ __forceinline__ void axpy_tile(double (&acc)[kFieldTile], const double* q, double x) {
#pragma unroll
  for (int u = 0; u < kFieldTile; u += 2) {
    const double2 a = *reinterpret_cast<const double2*>(q + u);
    acc[u] += a.x * x;
    acc[u + 1] += a.y * x;
  }
}

// Shared part of the forward and the embedding gradient: for the thread's column w, the products
// p_i = sum_j Qt[j][i] e_jw for a tile of kFieldTile fields i0.., j from j_begin (the forward's
// Q is upper triangular, so j < i0 contributes nothing and is skipped).
template <typename A>
__device__ __forceinline__ void fw_field_tile(A (&p)[kFieldTile], const A* qt, const A* e, int es,
                                              int np, long long n, long long i0, long long j_begin,
                                              int w) {
#pragma unroll
  for (int u = 0; u < kFieldTile; ++u) p[u] = A(0);
  for (long long j = j_begin; j < n; ++j) axpy_tile(p, qt + j * np + i0, e[j * es + w]);
}

template <typename T>
__global__ void __launch_bounds__(kFwThreads)
fwfm_forward_kernel(const T* __restrict__ table, IndexArgs ix, int num_sets, int dim,
                    const acc_t<T>* __restrict__ qt, FwTile t, T* __restrict__ out) {
  using A = acc_t<T>;
  const int m = blockIdx.z;
  const int k0 = blockIdx.y * t.kc;
  const long long b0 = static_cast<long long>(blockIdx.x) * t.sb;
  const int sn = static_cast<int>(min(static_cast<long long>(t.sb), ix.batch - b0));
  const int kn = min(t.kc, dim - k0);
  const long long n = ix.num_fields;
  const FwSmem<A> s = fw_smem<A>(t, n);
  fw_load_tile<T>(s, t, table, ix, num_sets, dim, m, b0, sn, k0, kn, nullptr, qt);
  const A* q = t.q_smem ? s.q : qt + m * n * t.np;
  for (int w = threadIdx.x; w < t.sb * t.kc; w += blockDim.x) {
    const int smp = w / t.kc, kk = w - smp * t.kc;
    if (smp >= sn || kk >= kn) continue;
    A acc = A(0);
    for (long long i0 = 0; i0 < n; i0 += kFieldTile) {
      A p[kFieldTile];
      fw_field_tile(p, q, s.e, t.es, t.np, n, i0, i0, w);
#pragma unroll
      for (int u = 0; u < kFieldTile; ++u) acc += s.e[(i0 + u) * t.es + w] * p[u];  // pad rows are 0
    }
    out[(b0 + smp) * num_sets * dim + m * dim + k0 + kk] = from_acc<T>(acc);
  }
}

// dL/de_i = g * sum_j (r_ij + r_ji) e_j (q = r + r^T is symmetric, so Qt = Q).
template <typename T, bool ATOMIC>
__global__ void __launch_bounds__(kFwThreads)
fwfm_backward_emb_kernel(const T* __restrict__ grad, const T* __restrict__ table, IndexArgs ix,
                         int num_sets, int dim, const acc_t<T>* __restrict__ qt, FwTile t,
                         T* __restrict__ dest) {
  using A = acc_t<T>;
  const int m = blockIdx.z;
  const int k0 = blockIdx.y * t.kc;
  const long long b0 = static_cast<long long>(blockIdx.x) * t.sb;
  const int sn = static_cast<int>(min(static_cast<long long>(t.sb), ix.batch - b0));
  const int kn = min(t.kc, dim - k0);
  const long long n = ix.num_fields;
  const long long mk = static_cast<long long>(num_sets) * dim;
  const FwSmem<A> s = fw_smem<A>(t, n);
  fw_load_tile<T>(s, t, table, ix, num_sets, dim, m, b0, sn, k0, kn, grad, qt);
  const A* q = t.q_smem ? s.q : qt + m * n * t.np;
  for (int w = threadIdx.x; w < t.sb * t.kc; w += blockDim.x) {
    const int smp = w / t.kc, kk = w - smp * t.kc;
    if (smp >= sn || kk >= kn) continue;
    const A g = s.g[w];
    for (long long i0 = 0; i0 < n; i0 += kFieldTile) {
      A p[kFieldTile];
      fw_field_tile(p, q, s.e, t.es, t.np, n, i0, 0, w);
#pragma unroll
      for (int u = 0; u < kFieldTile; ++u) {
        const long long i = i0 + u;
        if (i >= n) break;
        const T d = from_acc<T>(g * p[u]);
        if constexpr (ATOMIC) {
          atomicAdd(dest + s.rows[smp * n + i] * mk + m * dim + k0 + kk, d);
        } else {
          dest[(((b0 + smp) * num_sets + m) * n + i) * dim + k0 + kk] = d;
        }
      }
    }
  }
}

// partial[chunk, m, i, j] = sum over the chunk's samples and all k of g_k e_ik e_jk.
// Thread tile: fields i = ib + nb*u, j = jb + nb*v (u, v < 4, nb = ceil(N/4)); strided rather
// than blocked so that the lanes of a warp read E rows whose stride is odd: no bank conflicts.
template <typename T>
__global__ void __launch_bounds__(kFwThreads)
fwfm_weight_grad_kernel(const T* __restrict__ grad, const T* __restrict__ table, IndexArgs ix,
                        int num_sets, int dim, FwTile t, long long chunk_size,
                        acc_t<T>* __restrict__ partial) {
  using A = acc_t<T>;
  constexpr int R = 4;
  const long long chunk = blockIdx.x;
  const int m = blockIdx.y;
  const long long n = ix.num_fields;
  const long long nb = (n + R - 1) / R;
  const long long begin = chunk * chunk_size;
  const long long end = min(ix.batch, begin + chunk_size);
  A* part = partial + (chunk * num_sets + m) * n * n;
  const FwSmem<A> s = fw_smem<A>(t, n);
  const int width = t.sb * t.kc;
  for (long long b0 = begin; b0 < end; b0 += t.sb) {
    const int sn = static_cast<int>(min(static_cast<long long>(t.sb), end - b0));
    for (int k0 = 0; k0 < dim; k0 += t.kc) {
      const int kn = min(t.kc, dim - k0);
      fw_load_tile<T>(s, t, table, ix, num_sets, dim, m, b0, sn, k0, kn, grad, nullptr);
      for (long long eb = threadIdx.x; eb < nb * nb; eb += blockDim.x) {
        const long long ib = eb / nb, jb = eb - ib * nb;
        A acc[R][R];
#pragma unroll
        for (int u = 0; u < R; ++u)
#pragma unroll
          for (int v = 0; v < R; ++v) acc[u][v] = A(0);
        // Rows ib + nb*u < 4*nb <= ne exist (zero padding), so the loop needs no guards.
        for (int w = 0; w < width; ++w) {
          const A g = s.g[w];
          A ei[R], ej[R];
#pragma unroll
          for (int u = 0; u < R; ++u) {
            ei[u] = g * s.e[(ib + nb * u) * t.es + w];
            ej[u] = s.e[(jb + nb * u) * t.es + w];
          }
#pragma unroll
          for (int u = 0; u < R; ++u)
#pragma unroll
            for (int v = 0; v < R; ++v) acc[u][v] += ei[u] * ej[v];
        }
#pragma unroll
        for (int u = 0; u < R; ++u) {
#pragma unroll
          for (int v = 0; v < R; ++v) {
            const long long i = ib + nb * u, j = jb + nb * v;
            if (i < n && j < n) part[i * n + j] += acc[u][v];  // this thread's entry only
          }
        }
      }
      __syncthreads();  // the next tile overwrites E
    }
  }
}

// Largest tile that fits the default 48 KB of shared memory: about one column per thread,
// fewer samples, then fewer columns, then Q left in global memory.
FwTile fw_tile(long long n, int dim, size_t acc_bytes) {
  constexpr size_t kBudget = 48 * 1024;
  constexpr size_t kQBudget = 16 * 1024;
  FwTile t{};
  t.ne = static_cast<int>(round_up(n, kFieldTile));
  t.np = t.ne;
  const bool q_fits = static_cast<size_t>(n * t.np) * acc_bytes <= kQBudget;
  for (int q_smem = q_fits ? 1 : 0; q_smem >= 0; --q_smem) {
    t.q_smem = q_smem;
    for (int kc = dim < kFwThreads ? dim : kFwThreads; kc >= 1; kc = kc == 1 ? 0 : (kc + 1) / 2) {
      for (int sb = kFwThreads / kc > 1 ? kFwThreads / kc : 1; sb >= 1; sb = sb == 1 ? 0 : sb / 2) {
        t.sb = sb;
        t.kc = kc;
        t.es = (sb * kc) | 1;
        const size_t bytes = acc_bytes == 8 ? fw_smem_bytes<double>(t, n) : fw_smem_bytes<float>(t, n);
        if (bytes <= kBudget) return t;
      }
    }
  }
  throw std::invalid_argument("fwfm pooling: " + std::to_string(n) +
                              " fields do not fit the CUDA kernel's shared memory; use the "
                              "triton or reference backend");
}

dim3 fw_grid(const FwTile& t, long long batch, int num_sets, int dim) {
  if (num_sets > 65535) throw std::invalid_argument("fwfm pooling supports at most 65535 sets");
  return dim3(static_cast<unsigned>(ceil_div(batch, t.sb)),
              static_cast<unsigned>(ceil_div(dim, t.kc)), static_cast<unsigned>(num_sets));
}

template <typename Fn>
void with_index_type(long long total, Fn&& fn) {
  if (total < (1LL << 31)) fn(static_cast<unsigned int>(0));
  else fn(static_cast<unsigned long long>(0));
}

}  // namespace

void fm_forward(const Launch& launch, DType dtype, const void* table, const IndexArgs& ix,
                int num_sets, int dim, void* out) {
  const long long mk = static_cast<long long>(num_sets) * dim;
  if (ix.batch == 0 || mk == 0) return;
  DeviceGuard guard(launch.device);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    // Pooling is elementwise over the M*K values, so a vector may span sets: V | M*K.
    const int vb = vector_bytes(sizeof(T), mk * sizeof(T), {table, out});
    dispatch_vec<T>(vb, [&](auto v) {
      constexpr int V = decltype(v)::value;
      const long long total = ix.batch * (mk / V);
      with_index_type(total, [&](auto itag) {
        using I = decltype(itag);
        const unsigned grid = stride_grid(total, kThreads, launch.device);
        fm_forward_kernel<T, V, I><<<grid, kThreads, 0, launch.stream>>>(
            static_cast<const T*>(table), ix, static_cast<int>(mk / V), static_cast<T*>(out),
            static_cast<I>(total));
        cuda_check_launch("fm_forward_kernel");
      });
    });
  });
}

void fm_backward(const Launch& launch, DType dtype, const void* grad, const void* table,
                 const IndexArgs& ix, int num_sets, int dim, void* dest, bool atomic) {
  const long long mk = static_cast<long long>(num_sets) * dim;
  if (ix.batch == 0 || mk == 0 || ix.num_fields == 0) return;
  if (atomic && dtype != DType::kFloat32 && dtype != DType::kFloat64)
    throw std::invalid_argument("fm_backward: atomic accumulation needs float32 or float64");
  DeviceGuard guard(launch.device);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    // V | K: the per-pair gradient is written set by set.
    const int vb = vector_bytes(sizeof(T), static_cast<long long>(dim) * sizeof(T), {grad, table, dest});
    dispatch_vec<T>(vb, [&](auto v) {
      constexpr int V = decltype(v)::value;
      const int kv = dim / V;
      const long long total = ix.batch * num_sets * kv;
      with_index_type(total, [&](auto itag) {
        using I = decltype(itag);
        const unsigned grid = stride_grid(total, kThreads, launch.device);
        if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
          if (atomic) {
            fm_backward_kernel<T, V, true, I><<<grid, kThreads, 0, launch.stream>>>(
                static_cast<const T*>(grad), static_cast<const T*>(table), ix, num_sets, kv,
                static_cast<T*>(dest), static_cast<I>(total));
            cuda_check_launch("fm_backward_kernel");
            return;
          }
        }
        fm_backward_kernel<T, V, false, I><<<grid, kThreads, 0, launch.stream>>>(
            static_cast<const T*>(grad), static_cast<const T*>(table), ix, num_sets, kv,
            static_cast<T*>(dest), static_cast<I>(total));
        cuda_check_launch("fm_backward_kernel");
      });
    });
  });
}

void fwfm_forward(const Launch& launch, DType dtype, const void* table, const IndexArgs& ix,
                  int num_sets, int dim, const void* q_upper, void* out) {
  if (ix.batch == 0 || num_sets == 0 || dim == 0 || ix.num_fields == 0) return;
  DeviceGuard guard(launch.device);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const FwTile t = fw_tile(ix.num_fields, dim, sizeof(A));
    const size_t smem = fw_smem_bytes<A>(t, ix.num_fields);
    fwfm_forward_kernel<T><<<fw_grid(t, ix.batch, num_sets, dim), kFwThreads, smem, launch.stream>>>(
        static_cast<const T*>(table), ix, num_sets, dim, static_cast<const A*>(q_upper), t,
        static_cast<T*>(out));
    cuda_check_launch("fwfm_forward_kernel");
  });
}

ChunkPlan fwfm_weight_grad_plan(long long batch, int num_sets, int device) {
  DeviceGuard guard(device);
  // Enough blocks (chunks x sets) to fill the device a few times; each chunk at least 32 samples.
  long long chunks = ceil_div(4LL * sm_count(device), num_sets > 0 ? num_sets : 1);
  const long long most = ceil_div(batch, 32);
  chunks = chunks < most ? chunks : most;
  chunks = chunks > 1 ? chunks : 1;
  const long long size = batch > 0 ? ceil_div(batch, chunks) : 1;
  return ChunkPlan{batch > 0 ? ceil_div(batch, size) : 1, size};
}

void fwfm_backward(const Launch& launch, DType dtype, const void* grad, const void* table,
                   const IndexArgs& ix, int num_sets, int dim, const void* q_full, void* dest,
                   bool atomic, void* weight_partial, const ChunkPlan& plan, void* grad_weight) {
  if (ix.batch == 0 || num_sets == 0 || dim == 0 || ix.num_fields == 0) return;
  if (atomic && dtype != DType::kFloat32 && dtype != DType::kFloat64)
    throw std::invalid_argument("fwfm_backward: atomic accumulation needs float32 or float64");
  if (plan.chunks < 1 || plan.chunk_size < 1 || (plan.chunks - 1) * plan.chunk_size >= ix.batch ||
      plan.chunks * plan.chunk_size < ix.batch)
    throw std::invalid_argument("fwfm_backward: chunk plan does not cover the batch");
  DeviceGuard guard(launch.device);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const long long n = ix.num_fields;
    const FwTile t = fw_tile(n, dim, sizeof(A));
    const size_t smem = fw_smem_bytes<A>(t, n);
    const dim3 grid = fw_grid(t, ix.batch, num_sets, dim);
    auto emb = [&](auto atomic_tag) {
      constexpr bool kAtomic = decltype(atomic_tag)::value;
      fwfm_backward_emb_kernel<T, kAtomic><<<grid, kFwThreads, smem, launch.stream>>>(
          static_cast<const T*>(grad), static_cast<const T*>(table), ix, num_sets, dim,
          static_cast<const A*>(q_full), t, static_cast<T*>(dest));
      cuda_check_launch("fwfm_backward_emb_kernel");
    };
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      if (atomic) emb(std::true_type{});
      else emb(std::false_type{});
    } else {
      emb(std::false_type{});
    }
    // The weight gradient needs no Q: same tile, Q not staged.
    FwTile tw = t;
    tw.q_smem = 0;
    const size_t smem_w = fw_smem_bytes<A>(tw, n);
    fwfm_weight_grad_kernel<T><<<dim3(static_cast<unsigned>(plan.chunks), num_sets), kFwThreads,
                                 smem_w, launch.stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(table), ix, num_sets, dim, tw,
        plan.chunk_size, static_cast<A*>(weight_partial));
    cuda_check_launch("fwfm_weight_grad_kernel");
    const long long count = static_cast<long long>(num_sets) * n * n;
    sum_slices<T>(launch, static_cast<const A*>(weight_partial), 1, plan.chunks, count,
                  static_cast<T*>(grad_weight));
  });
}

}  // namespace kernels
}  // namespace fastme
