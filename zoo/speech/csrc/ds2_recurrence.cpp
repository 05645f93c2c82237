// DeepSpeech2's recurrences (LSTM, GRU, simple RNN; arXiv 1512.02595 §3.1-3.4) on the CPU, given the
// batch-normalised input term B(W x) of every frame: per step only the U h_{t−1} product and one fused
// element-wise pass, forward and back-propagation through time. Built on first use by
// zoo/speech/deepspeech2.py (torch.utils.cpp_extension, PackedRecurrence), which allocates the buffers
// and lays out U in panels.
//
// Packed layout, as nn.utils.rnn.pack_padded_sequence but utterance-major: the valid frames of
// utterance b are rows starts[b] .. starts[b] + lengths[b] − 1 of gx (N, dirs·G) and y (N, dirs, H).
// The state rows are kept in the order `order` (utterances by decreasing length), so the rows still
// running at step s are a prefix [0, active[s]) and each step's product covers only those. Direction
// 0 reads frame t = s, direction 1 (backward in time) frame t = lengths[b] − 1 − s.
//
// Gate order and equations are torch's (nn.LSTM: i, f, g, o; nn.GRU: r, z, n with
// n = tanh(x_n + r ⊙ (U_n h)), h' = (1 − z) ⊙ n + z ⊙ h; the hidden-to-hidden biases are zero).
//
// The per-step products. A step multiplies a few state rows (the batch) by U: for a wide layer at a small
// batch (2 × 1024 by 1024 × 4096) that reads 16 MB of U to do 8 MFLOP, so what counts is where U is read
// from. A register-blocked kernel (up to 6 rows × P columns of accumulators, P = 128 bytes: 32 floats, 16
// doubles) multiplies by panels of P columns, each (K, P) contiguous and zero-padded past H: forward (h U^T)
// U's rows transposed, backward (g U) U's columns; each thread packs its own panels at the start of a layer
// (`packed`, a scratch buffer). The hidden units are split in chunks of P between the
// threads, and each thread owns its chunks' columns of every gate: it computes those products, applies the
// gates to its units, and reads only its share of U, which stays in that core's caches from one step to the
// next. The directions run one after the other on all threads; a step costs one barrier. The per-step
// products `pre` and dh have rows of Hp per gate (columns g·Hp + k).
//
// bf16 products (bf16 autocast, on CPUs with AVX512-BF16): U is packed as bf16 and each panel row holds P
// columns of a *pair* of depth rows, ((k, j), (k + 1, j)), which `vdpbf16ps` multiplies and adds into float32
// accumulators; the step's left operand is read as bf16 too: a bf16 copy of every state h (`states_low`,
// forward) and of every gate gradient (`grad_low`, backward), written next to the float32 ones by the thread
// that owns the unit. States, gates, cells and all element-wise math stay float32; the panels and the per-step
// reads are half the bytes. The caller reuses both copies as the operands of ∂L/∂U.

#include <omp.h>
#include <torch/extension.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <cstring>

// glibc declares its vector exp / tanh (libmvec) only under -ffinite-math-only; declared here, NaN and
// Inf still propagate.
#if defined(__x86_64__) && defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) float tanhf(float) noexcept;
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
__attribute__((simd("notinbranch"))) double tanh(double) noexcept;
}
#endif

namespace {

using torch::Tensor;
using Bf16 = at::BFloat16;

#if defined(__AVX512BF16__)
constexpr bool kBf16Products = true;
#else
constexpr bool kBf16Products = false;
#endif

enum Kind : int64_t { kLstm = 0, kGru = 1, kTanh = 2, kRelu = 3 };

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
T* ptr(const Tensor& t) {
  return t.data_ptr<T>();
}

template <typename T>
struct Vec;  // 64 bytes: one AVX-512 register (two AVX2 ones)
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);
template <typename T>
constexpr int64_t kPanel = 2 * kLanes<T>;  // P: columns per panel

// c (MR rows of P columns, stride ldc) = or += a (MR rows, stride lda) · panel (depth rows of P, stride ldw)
template <typename T, int MR, bool Accumulate>
inline void panel_block(const T* a, int64_t lda, const T* panel, int64_t ldw, int64_t depth, T* c, int64_t ldc) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = kLanes<T>;
  V acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = V{};
  for (int64_t k = 0; k < depth; ++k) {
    V w0, w1;
    std::memcpy(&w0, panel + k * ldw, sizeof(V));
    std::memcpy(&w1, panel + k * ldw + L, sizeof(V));
    for (int i = 0; i < MR; ++i) {
      const T s = a[i * lda + k];
      acc[i][0] += s * w0;
      acc[i][1] += s * w1;
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int half = 0; half < 2; ++half) {
      T* out = c + i * ldc + half * L;
      if (Accumulate) {
        V old;
        std::memcpy(&old, out, sizeof(V));
        acc[i][half] += old;
      }
      std::memcpy(out, &acc[i][half], sizeof(V));
    }
  }
}

template <typename T, bool Accumulate>
void panel_product(const T* a, int64_t lda, int64_t rows, const T* panel, int64_t ldw, int64_t depth, T* c,
                   int64_t ldc) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) panel_block<T, 6, Accumulate>(a + r * lda, lda, panel, ldw, depth, c + r * ldc, ldc);
  const T* ar = a + r * lda;
  T* cr = c + r * ldc;
  switch (rows - r) {
    case 1: return panel_block<T, 1, Accumulate>(ar, lda, panel, ldw, depth, cr, ldc);
    case 2: return panel_block<T, 2, Accumulate>(ar, lda, panel, ldw, depth, cr, ldc);
    case 3: return panel_block<T, 3, Accumulate>(ar, lda, panel, ldw, depth, cr, ldc);
    case 4: return panel_block<T, 4, Accumulate>(ar, lda, panel, ldw, depth, cr, ldc);
    case 5: return panel_block<T, 5, Accumulate>(ar, lda, panel, ldw, depth, cr, ldc);
    default: return;
  }
}

#if defined(__AVX512BF16__)
// c (MR rows of P = 32 float columns, stride ldc) = or += a (MR bf16 rows, stride lda, 2·pairs long) · panel
// (pairs rows of 32 column pairs: 64 bf16): one vdpbf16ps per row, half panel and pair of depth rows.
template <int MR, bool Accumulate>
inline void panel_block_bf16(const Bf16* a, int64_t lda, const Bf16* panel, int64_t pairs, float* c, int64_t ldc) {
  __m512 acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(panel + p * 64);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(panel + p * 64 + 32);
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + i * lda + 2 * p, sizeof(pair));
      const __m512bh s = (__m512bh)_mm512_set1_epi32(pair);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], s, w0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], s, w1);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int half = 0; half < 2; ++half) {
      float* out = c + i * ldc + half * 16;
      if (Accumulate) acc[i][half] = _mm512_add_ps(acc[i][half], _mm512_loadu_ps(out));
      _mm512_storeu_ps(out, acc[i][half]);
    }
}

template <bool Accumulate>
void panel_product_bf16(const Bf16* a, int64_t lda, int64_t rows, const Bf16* panel, int64_t pairs, float* c,
                        int64_t ldc) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) panel_block_bf16<6, Accumulate>(a + r * lda, lda, panel, pairs, c + r * ldc, ldc);
  const Bf16* ar = a + r * lda;
  float* cr = c + r * ldc;
  switch (rows - r) {
    case 1: return panel_block_bf16<1, Accumulate>(ar, lda, panel, pairs, cr, ldc);
    case 2: return panel_block_bf16<2, Accumulate>(ar, lda, panel, pairs, cr, ldc);
    case 3: return panel_block_bf16<3, Accumulate>(ar, lda, panel, pairs, cr, ldc);
    case 4: return panel_block_bf16<4, Accumulate>(ar, lda, panel, pairs, cr, ldc);
    case 5: return panel_block_bf16<5, Accumulate>(ar, lda, panel, pairs, cr, ldc);
    default: return;
  }
}
#endif

// A row's float values [k0, k1) of each of `blocks` blocks of `stride` (gate j at j·stride) into its bf16 copy.
inline void round_to_bf16(const float* __restrict__ from, Bf16* __restrict__ to, int64_t blocks, int64_t stride,
                          int64_t k0, int64_t k1) {
  for (int64_t j = 0; j < blocks; ++j)
    for (int64_t k = k0; k < k1; ++k) to[j * stride + k] = Bf16(from[j * stride + k]);
}

struct Plan {  // where state row r reads and writes at step s
  const int64_t *order, *lengths, *starts, *active;
  int64_t frame(int64_t r, int64_t s, int64_t direction) const {
    const int64_t b = order[r];
    return starts[b] + (direction == 0 ? s : lengths[b] - 1 - s);
  }
};

struct Share {  // the hidden units [k0, k1) and their chunks [c0, c1) of one thread: its part of `parts`
  int64_t c0, c1, k0, k1;
  Share(int64_t chunks, int64_t hidden, int64_t panel, int64_t part, int64_t parts)
      : c0(chunks * part / parts), c1(chunks * (part + 1) / parts) {
    k0 = std::min(hidden, c0 * panel);
    k1 = std::min(hidden, c1 * panel);
  }
};

constexpr int64_t kPrivateBytes = 4 << 20;  // U of a direction up to this size: one direction per thread

// Who runs what. A bidirectional layer whose U (`direction_bytes` per direction) fits a core's caches, on as
// many threads as directions: one direction per thread, all its units, no synchronisation. Otherwise the
// directions one after the other, all threads splitting the hidden units (`run(d, share, true)`: one
// barrier per step).
template <typename F>
void schedule(int64_t dirs, int64_t chunks, int64_t hidden, int64_t panel, int64_t direction_bytes, const F& run) {
  const int64_t threads = at::get_num_threads();
  if (dirs > 1 && threads == dirs && direction_bytes <= kPrivateBytes) {
#pragma omp parallel num_threads(static_cast<int>(dirs))
    run(omp_get_thread_num(), Share(chunks, hidden, panel, 0, 1), false);
    return;
  }
  const int team = static_cast<int>(std::max<int64_t>(1, std::min(threads, chunks)));
  for (int64_t d = 0; d < dirs; ++d) {
#pragma omp parallel num_threads(team)
    run(d, Share(chunks, hidden, panel, omp_get_thread_num(), omp_get_num_threads()), true);
  }
}

// The element-wise pass of one state row over the units [k0, k1): gate j of x, a and gx at j·H, of u and g at
// j·Hp (forward) or j·H (backward). Restrict-qualified arrays and `ivdep`, so that the compiler vectorises them (with glibc's vector exp /
// tanh) without run-time overlap checks.
template <typename T, bool HasPrev>
void lstm_forward(const T* __restrict__ x, const T* __restrict__ u, const T* __restrict__ c_prev, T* __restrict__ a,
                  T* __restrict__ c, T* __restrict__ h, T* __restrict__ out, int64_t H, int64_t hp, int64_t k0,
                  int64_t k1) {
#pragma GCC ivdep  // the gate slices (j·H + k, j·Hp + k) of different iterations never overlap
  for (int64_t k = k0; k < k1; ++k) {
    const T i = sigmoid(x[k] + u[k]), f = sigmoid(x[H + k] + u[hp + k]);
    const T g = std::tanh(x[2 * H + k] + u[2 * hp + k]), o = sigmoid(x[3 * H + k] + u[3 * hp + k]);
    a[k] = i;
    a[H + k] = f;
    a[2 * H + k] = g;
    a[3 * H + k] = o;
    const T cell = (HasPrev ? f * c_prev[k] : T(0)) + i * g;
    c[k] = cell;
    h[k] = out[k] = o * std::tanh(cell);
  }
}

template <typename T>
void gru_forward(const T* __restrict__ x, const T* __restrict__ u, const T* __restrict__ h_prev, T* __restrict__ a,
                 T* __restrict__ un_out, T* __restrict__ h, T* __restrict__ out, int64_t H, int64_t hp, int64_t k0,
                 int64_t k1) {
#pragma GCC ivdep  // the gate slices (j·H + k, j·Hp + k) of different iterations never overlap
  for (int64_t k = k0; k < k1; ++k) {
    const T r = sigmoid(x[k] + u[k]), z = sigmoid(x[H + k] + u[hp + k]), un = u[2 * hp + k];
    const T n = std::tanh(x[2 * H + k] + r * un);
    a[k] = r;
    a[H + k] = z;
    a[2 * H + k] = n;
    un_out[k] = un;
    h[k] = out[k] = (T(1) - z) * n + z * h_prev[k];
  }
}

template <typename T, bool Relu>
void rnn_forward(const T* __restrict__ x, const T* __restrict__ u, T* __restrict__ a, T* __restrict__ h,
                 T* __restrict__ out, int64_t k0, int64_t k1) {
#pragma GCC ivdep  // the gate slices (j·H + k, j·Hp + k) of different iterations never overlap
  for (int64_t k = k0; k < k1; ++k) {
    const T v = x[k] + u[k];
    a[k] = h[k] = out[k] = Relu ? std::max(v, T(0)) : std::tanh(v);
  }
}

// Back-propagation through one step: dh (this row's ∂L/∂h_s from the later steps, without the output's gy) is
// replaced by the part of ∂L/∂h_{s−1} that does not go through U (the product adds U^T g afterwards).
template <typename T, bool HasPrev>
void lstm_backward(const T* __restrict__ gy, const T* __restrict__ a, const T* __restrict__ c,
                   const T* __restrict__ c_prev, T* __restrict__ dh, T* __restrict__ dc, T* __restrict__ gx,
                   T* __restrict__ g, int64_t H, int64_t k0, int64_t k1) {
#pragma GCC ivdep  // the gate slices (j·H + k, j·Hp + k) of different iterations never overlap
  for (int64_t k = k0; k < k1; ++k) {
    const T dht = dh[k] + gy[k];
    const T i = a[k], f = a[H + k], gg = a[2 * H + k], o = a[3 * H + k];
    const T tc = std::tanh(c[k]);
    const T dct = dc[k] + dht * o * (T(1) - tc * tc);
    const T vi = dct * gg * i * (T(1) - i), vf = HasPrev ? dct * c_prev[k] * f * (T(1) - f) : T(0);
    const T vg = dct * i * (T(1) - gg * gg), vo = dht * tc * o * (T(1) - o);
    gx[k] = g[k] = vi;
    gx[H + k] = g[H + k] = vf;
    gx[2 * H + k] = g[2 * H + k] = vg;
    gx[3 * H + k] = g[3 * H + k] = vo;
    dc[k] = dct * f;
    dh[k] = T(0);
  }
}

template <typename T>
void gru_backward(const T* __restrict__ gy, const T* __restrict__ a, const T* __restrict__ un_saved,
                  const T* __restrict__ h_prev, T* __restrict__ dh, T* __restrict__ gx, T* __restrict__ g, int64_t H,
                  int64_t k0, int64_t k1) {
#pragma GCC ivdep  // the gate slices (j·H + k, j·Hp + k) of different iterations never overlap
  for (int64_t k = k0; k < k1; ++k) {
    const T dht = dh[k] + gy[k];
    const T r = a[k], z = a[H + k], n = a[2 * H + k], un = un_saved[k];
    const T dn = dht * (T(1) - z) * (T(1) - n * n);  // ∂L/∂(x_n + r U_n h)
    const T dz = dht * (h_prev[k] - n) * z * (T(1) - z);
    const T dr = dn * un * r * (T(1) - r);
    gx[k] = g[k] = dr;
    gx[H + k] = g[H + k] = dz;
    gx[2 * H + k] = dn;
    g[2 * H + k] = dn * r;
    dh[k] = dht * z;  // the direct path h' = ... + z h
  }
}

template <typename T, bool Relu>
void rnn_backward(const T* __restrict__ gy, const T* __restrict__ a, T* __restrict__ dh, T* __restrict__ gx,
                  T* __restrict__ g, int64_t k0, int64_t k1) {
#pragma GCC ivdep  // the gate slices (j·H + k, j·Hp + k) of different iterations never overlap
  for (int64_t k = k0; k < k1; ++k) {
    const T dht = dh[k] + gy[k], h = a[k];
    gx[k] = g[k] = dht * (Relu ? (h > T(0) ? T(1) : T(0)) : T(1) - h * h);
    dh[k] = T(0);
  }
}

// Depth rows of a panel as stored: float / double panels one per depth row, bf16 ones a pair per row.
template <typename T, typename W>
constexpr int64_t panel_depth(int64_t depth) {
  return std::is_same_v<W, T> ? depth : 2 * ((depth + 1) / 2);
}

// Pack this thread's panels of U^T for direction d: panel (c, g)[k][j] = U[g·H + c·P + j][k], zero where
// c·P + j ≥ H. bf16 panels: [k / 2][j][k % 2], the last depth row zero when H is odd.
template <typename T, typename W>
void pack_rows(const T* weight, W* packed, int64_t d, int64_t chunks, int64_t blocks, int64_t hidden, const Share& own) {
  constexpr int64_t P = kPanel<T>;
  const int64_t depth = panel_depth<T, W>(hidden);
  for (int64_t c = own.c0; c < own.c1; ++c)
    for (int64_t g = 0; g < blocks; ++g) {
      W* panel = packed + ((d * chunks + c) * blocks + g) * depth * P;
      for (int64_t j = 0; j < P; ++j) {
        const int64_t unit = c * P + j;
        const T* row = weight + (d * blocks * hidden + g * hidden + std::min(unit, hidden - 1)) * hidden;
        if constexpr (std::is_same_v<W, T>) {
          for (int64_t k = 0; k < depth; ++k) panel[k * P + j] = unit < hidden ? row[k] : T(0);
        } else {
          for (int64_t k = 0; k < depth; ++k)
            panel[(k / 2) * 2 * P + 2 * j + k % 2] = W(unit < hidden && k < hidden ? row[k] : T(0));
        }
      }
    }
}

// Pack this thread's panels of U for direction d: panel c[k][j] = U[k][c·P + j] (k < G), zero where c·P + j ≥ H.
// bf16 panels: [k / 2][j][k % 2], the last depth row zero when G is odd.
template <typename T, typename W>
void pack_columns(const T* weight, W* packed, int64_t d, int64_t chunks, int64_t gates, int64_t hidden,
                  const Share& own) {
  constexpr int64_t P = kPanel<T>;
  const int64_t depth = panel_depth<T, W>(gates);
  for (int64_t c = own.c0; c < own.c1; ++c) {
    W* panel = packed + (d * chunks + c) * depth * P;
    const int64_t width = std::min(P, hidden - c * P);
    if constexpr (!std::is_same_v<W, T>) std::fill(panel, panel + depth * P, W(0));
    for (int64_t k = 0; k < gates; ++k) {
      const T* row = weight + (d * gates + k) * hidden + c * P;
      if constexpr (std::is_same_v<W, T>) {
        std::copy(row, row + width, panel + k * P);
        std::fill(panel + k * P + width, panel + (k + 1) * P, T(0));
      } else {
        for (int64_t j = 0; j < width; ++j) panel[(k / 2) * 2 * P + 2 * j + k % 2] = W(row[j]);
      }
    }
  }
}

// The per-step product with the panels, this thread's chunks: float / double panels multiply the float rows
// `a`, bf16 panels their bf16 copy `a_low` (rows of `depth_low`, the depth rounded up to pairs).
template <typename T, typename W, bool Accumulate>
inline void chunk_product(const T* a, const Bf16* a_low, int64_t depth, int64_t depth_low, int64_t rows,
                          const W* panel, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<W, T>) {
    panel_product<T, Accumulate>(a, depth, rows, panel, kPanel<T>, depth, c, ldc);
  } else {
#if defined(__AVX512BF16__)
    panel_product_bf16<Accumulate>(a_low, depth_low, rows, panel, depth_low / 2, c, ldc);
#endif
  }
}

// gx (N, dirs·G); weight U (dirs, G, H); packed: scratch for U^T's panels, (dirs, chunks, gates, H, P), bf16:
// (dirs, chunks, gates, ⌈H/2⌉, 2P); y (N, dirs, H). states (dirs, S + 1, B, H) (states[d][s] = h_{s−1} of row r)
// and, with bf16 panels, states_low: their bf16 copy (dirs, S + 1, B, 2⌈H/2⌉), zeros; acts (dirs, S, B, G): LSTM
// σ(i), σ(f), tanh(g), σ(o); GRU σ(r), σ(z), tanh(n); RNN h. cells (dirs, S, B, H): the LSTM cell, the GRU's
// U_n h_{s−1} (unused by the simple RNN). pre (dirs, B, gates · Hp): scratch for U h.
template <typename T, typename W>
void forward_impl(int64_t kind, const Tensor& gx, const Tensor& weight, const Tensor& packed, const Plan& plan,
                  const Tensor& y, const Tensor& states, const Tensor& acts, const Tensor& cells, const Tensor& pre,
                  const Tensor& states_low) {
  constexpr int64_t P = kPanel<T>;
  constexpr bool low = !std::is_same_v<W, T>;
  const int64_t dirs = packed.size(0), chunks = packed.size(1), blocks = packed.size(2), hidden = weight.size(2);
  const int64_t steps = acts.size(1), batch = acts.size(2), gates = acts.size(3);
  const int64_t hp = chunks * P, width = blocks * hp, depth = panel_depth<T, W>(hidden);
  const T* gxp = ptr<T>(gx);
  W* wp = packed.data_ptr<W>();
  T *yp = ptr<T>(y), *sp = ptr<T>(states), *ap0 = ptr<T>(acts), *cp0 = ptr<T>(cells);
  Bf16* lp = low ? states_low.data_ptr<Bf16>() : nullptr;
  schedule(dirs, chunks, hidden, P, packed.nbytes() / dirs, [&](int64_t d, const Share& own, bool sync) {
      pack_rows(ptr<T>(weight), wp, d, chunks, blocks, hidden, own);  // read only by this thread
      T* pp = ptr<T>(pre) + d * batch * width;
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t n = plan.active[s];
        if (n == 0) break;
        const T* h_prev = sp + (d * (steps + 1) + s) * batch * hidden;
        T* h_next = sp + (d * (steps + 1) + s + 1) * batch * hidden;
        const Bf16* low_prev = low ? lp + (d * (steps + 1) + s) * batch * depth : nullptr;
        Bf16* low_next = low ? lp + (d * (steps + 1) + s + 1) * batch * depth : nullptr;
        for (int64_t c = own.c0; c < own.c1; ++c)
          for (int64_t g = 0; g < blocks; ++g)
            chunk_product<T, W, false>(h_prev, low_prev, hidden, depth, n,
                                       wp + ((d * chunks + c) * blocks + g) * depth * P, pp + g * hp + c * P, width);
        T* ap = ap0 + (d * steps + s) * batch * gates;
        T* cp = kind != kTanh && kind != kRelu ? cp0 + (d * steps + s) * batch * hidden : nullptr;
        for (int64_t r = 0; r < n; ++r) {
          const int64_t f = plan.frame(r, s, d);
          const T* x = gxp + f * dirs * gates + d * gates;
          const T* u = pp + r * width;
          const T* hq = h_prev + r * hidden;
          T* h = h_next + r * hidden;
          T* a = ap + r * gates;
          T* out = yp + (f * dirs + d) * hidden;
          const int64_t k0 = own.k0, k1 = own.k1;
          if (kind == kLstm) {
            T* c = cp + r * hidden;
            if (s == 0)
              lstm_forward<T, false>(x, u, nullptr, a, c, h, out, hidden, hp, k0, k1);
            else
              lstm_forward<T, true>(x, u, c - batch * hidden, a, c, h, out, hidden, hp, k0, k1);
          } else if (kind == kGru) {
            gru_forward(x, u, hq, a, cp + r * hidden, h, out, hidden, hp, k0, k1);
          } else if (kind == kTanh) {
            rnn_forward<T, false>(x, u, a, h, out, k0, k1);
          } else {
            rnn_forward<T, true>(x, u, a, h, out, k0, k1);
          }
          if constexpr (low) round_to_bf16(h, low_next + r * depth, 1, 0, k0, k1);
        }
        if (sync) {
#pragma omp barrier
        }
      }
  });
}

// grad_y (N, dirs, H) -> grad_gx (N, dirs·G) (every valid frame is written) and grad_pre (dirs, S, B, G),
// ∂L/∂(U h_{s−1}) of every step (zero-initialised: rows that have stopped stay 0), from which the caller takes
// ∂L/∂U in one product; with bf16 panels also grad_low, its bf16 copy (dirs, S, B, 2⌈G/2⌉), zeros. weight: U
// (dirs, G, H); packed: scratch for U's panels, (dirs, chunks, G, P), bf16: (dirs, chunks, ⌈G/2⌉, 2P).
// dh, dc (dirs, B, Hp): zeros.
template <typename T, typename W>
void backward_impl(int64_t kind, const Tensor& grad_y, const Tensor& weight, const Tensor& packed, const Plan& plan,
                   const Tensor& states, const Tensor& acts, const Tensor& cells, const Tensor& grad_gx,
                   const Tensor& grad_pre, const Tensor& dh, const Tensor& dc, const Tensor& grad_low) {
  constexpr int64_t P = kPanel<T>;
  constexpr bool low = !std::is_same_v<W, T>;
  const int64_t dirs = packed.size(0), chunks = packed.size(1), hp = chunks * P;
  const int64_t steps = acts.size(1), batch = acts.size(2), gates = acts.size(3), hidden = states.size(3);
  const int64_t blocks = gates / hidden, depth = panel_depth<T, W>(gates);
  const T* gyp = ptr<T>(grad_y);
  W* wp = packed.data_ptr<W>();
  const T *sp = ptr<T>(states), *ap0 = ptr<T>(acts), *cp0 = ptr<T>(cells);
  T *ggp = ptr<T>(grad_gx), *gp0 = ptr<T>(grad_pre), *dh0 = ptr<T>(dh), *dc0 = ptr<T>(dc);
  Bf16* lp = low ? grad_low.data_ptr<Bf16>() : nullptr;
  schedule(dirs, chunks, hidden, P, packed.nbytes() / dirs, [&](int64_t d, const Share& own, bool sync) {
      pack_columns(ptr<T>(weight), wp, d, chunks, gates, hidden, own);  // read only by this thread
      T* dhp = dh0 + d * batch * hp;
      T* dcp = dc0 + d * batch * hp;
      for (int64_t s = steps - 1; s >= 0; --s) {
        const int64_t n = plan.active[s];
        if (n == 0) continue;
        const T* h_prev = sp + (d * (steps + 1) + s) * batch * hidden;
        const T* ap = ap0 + (d * steps + s) * batch * gates;
        const T* cp = kind != kTanh && kind != kRelu ? cp0 + (d * steps + s) * batch * hidden : nullptr;
        T* gp = gp0 + (d * steps + s) * batch * gates;
        Bf16* gl = low ? lp + (d * steps + s) * batch * depth : nullptr;
        for (int64_t r = 0; r < n; ++r) {
          const int64_t f = plan.frame(r, s, d);
          const T* gy = gyp + (f * dirs + d) * hidden;
          const T* a = ap + r * gates;
          const T* hq = h_prev + r * hidden;
          T* dhr = dhp + r * hp;
          T* gx = ggp + f * dirs * gates + d * gates;
          T* g = gp + r * gates;
          const int64_t k0 = own.k0, k1 = own.k1;
          if (kind == kLstm) {
            const T* c = cp + r * hidden;
            if (s == 0)
              lstm_backward<T, false>(gy, a, c, nullptr, dhr, dcp + r * hp, gx, g, hidden, k0, k1);
            else
              lstm_backward<T, true>(gy, a, c, c - batch * hidden, dhr, dcp + r * hp, gx, g, hidden, k0, k1);
          } else if (kind == kGru) {
            gru_backward(gy, a, cp + r * hidden, hq, dhr, gx, g, hidden, k0, k1);
          } else if (kind == kTanh) {
            rnn_backward<T, false>(gy, a, dhr, gx, g, k0, k1);
          } else {
            rnn_backward<T, true>(gy, a, dhr, gx, g, k0, k1);
          }
          if constexpr (low) round_to_bf16(g, gl + r * depth, blocks, hidden, k0, k1);
        }
        if (sync) {
#pragma omp barrier  // every unit's gate gradients are in before any thread's product reads them
        }
        // ∂L/∂h_{s−1} += ∂L/∂(U h_{s−1}) U, this thread's columns
        for (int64_t c = own.c0; c < own.c1; ++c)
          chunk_product<T, W, true>(gp, gl, gates, depth, n, wp + (d * chunks + c) * depth * P, dhp + c * P, hp);
      }
  });
}

// Runs `run(T(), W())` for the dtype of the state buffers (float or double) and of the panels: the same, or
// bf16 panels with float states where the CPU has AVX512-BF16 (`bf16_products`).
template <typename F>
void dispatch(const Tensor& states, const Tensor& packed, F&& run) {
  const auto type = states.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble, "DS2 recurrence: ", type,
              " is not supported (float or double)");
  if (packed.scalar_type() == at::kBFloat16) {
    TORCH_CHECK(kBf16Products && type == at::kFloat,
                "DS2 recurrence: bf16 panels need float states and a CPU with AVX512-BF16 (see bf16_products)");
#if defined(__AVX512BF16__)
    return run(float(), Bf16());
#endif
  }
  TORCH_CHECK(packed.scalar_type() == type, "DS2 recurrence: panels of ", packed.scalar_type(), " for ", type,
              " states");
  if (type == at::kFloat) return run(float(), float());
  return run(double(), double());
}

Plan make_plan(const Tensor& order, const Tensor& lengths, const Tensor& starts, const Tensor& active) {
  for (const Tensor* t : {&order, &lengths, &starts, &active})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous() && t->device().is_cpu(),
                "DS2 recurrence: index tensors must be contiguous int64 on the CPU");
  return Plan{ptr<int64_t>(order), ptr<int64_t>(lengths), ptr<int64_t>(starts), ptr<int64_t>(active)};
}

// The last dimension of a panel: P columns (float / double), or P column pairs (bf16).
int64_t panel_width(const Tensor& states, const Tensor& packed) {
  if (packed.scalar_type() == at::kBFloat16) return 2 * kPanel<float>;
  return states.scalar_type() == at::kDouble ? kPanel<double> : kPanel<float>;
}

void check(const std::vector<Tensor>& buffers, const Tensor& packed, const Tensor& low) {
  const Tensor& first = buffers.front();
  for (const Tensor& t : buffers)
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == first.scalar_type() && t.device().is_cpu(),
                "DS2 recurrence: tensors must be contiguous, on the CPU and of one dtype");
  TORCH_CHECK(packed.is_contiguous() && packed.size(-1) == panel_width(first, packed), "DS2 recurrence: panels of ",
              panel_width(first, packed), " columns expected");
  if (packed.scalar_type() == at::kBFloat16)
    TORCH_CHECK(low.is_contiguous() && low.scalar_type() == at::kBFloat16,
                "DS2 recurrence: bf16 panels need the bf16 copy of the product's rows");
}

void forward(int64_t kind, const Tensor& gx, const Tensor& weight, const Tensor& packed, const Tensor& order,
             const Tensor& lengths, const Tensor& starts, const Tensor& active, const Tensor& y, const Tensor& states,
             const Tensor& acts, const Tensor& cells, const Tensor& pre, const Tensor& states_low) {
  const Plan plan = make_plan(order, lengths, starts, active);
  check({gx, weight, y, states, acts, cells, pre}, packed, states_low);
  dispatch(states, packed, [&](auto t, auto w) {
    forward_impl<decltype(t), decltype(w)>(kind, gx, weight, packed, plan, y, states, acts, cells, pre, states_low);
  });
}

void backward(int64_t kind, const Tensor& grad_y, const Tensor& weight, const Tensor& packed, const Tensor& order,
              const Tensor& lengths, const Tensor& starts, const Tensor& active, const Tensor& states,
              const Tensor& acts, const Tensor& cells, const Tensor& grad_gx, const Tensor& grad_pre,
              const Tensor& dh, const Tensor& dc, const Tensor& grad_low) {
  const Plan plan = make_plan(order, lengths, starts, active);
  check({grad_y, weight, states, acts, cells, grad_gx, grad_pre, dh, dc}, packed, grad_low);
  dispatch(states, packed, [&](auto t, auto w) {
    backward_impl<decltype(t), decltype(w)>(kind, grad_y, weight, packed, plan, states, acts, cells, grad_gx,
                                            grad_pre, dh, dc, grad_low);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &forward, "DS2 recurrence over packed frames, forward (fills the given buffers)");
  module.def("backward", &backward, "DS2 recurrence over packed frames, back-propagation through time");
  module.attr("bf16_products") = kBf16Products;  // bf16 panels (AVX512-BF16) are compiled in
}
