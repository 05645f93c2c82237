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

#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
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

// Pack this thread's panels of U^T for direction d: panel (c, g)[k][j] = U[g·H + c·P + j][k], zero where
// c·P + j ≥ H.
template <typename T>
void pack_rows(const T* weight, T* packed, int64_t d, int64_t chunks, int64_t blocks, int64_t hidden, const Share& own) {
  constexpr int64_t P = kPanel<T>;
  for (int64_t c = own.c0; c < own.c1; ++c)
    for (int64_t g = 0; g < blocks; ++g) {
      T* panel = packed + ((d * chunks + c) * blocks + g) * hidden * P;
      for (int64_t j = 0; j < P; ++j) {
        const int64_t unit = c * P + j;
        if (unit >= hidden) {
          for (int64_t k = 0; k < hidden; ++k) panel[k * P + j] = T(0);
          continue;
        }
        const T* row = weight + (d * blocks * hidden + g * hidden + unit) * hidden;
        for (int64_t k = 0; k < hidden; ++k) panel[k * P + j] = row[k];
      }
    }
}

// Pack this thread's panels of U for direction d: panel c[k][j] = U[k][c·P + j] (k < G), zero where c·P + j ≥ H.
template <typename T>
void pack_columns(const T* weight, T* packed, int64_t d, int64_t chunks, int64_t gates, int64_t hidden,
                  const Share& own) {
  constexpr int64_t P = kPanel<T>;
  for (int64_t c = own.c0; c < own.c1; ++c) {
    T* panel = packed + (d * chunks + c) * gates * P;
    const int64_t width = std::min(P, hidden - c * P);
    for (int64_t k = 0; k < gates; ++k) {
      const T* row = weight + (d * gates + k) * hidden + c * P;
      std::copy(row, row + width, panel + k * P);
      std::fill(panel + k * P + width, panel + (k + 1) * P, T(0));
    }
  }
}

// gx (N, dirs·G); weight U (dirs, G, H); packed (dirs, chunks, gates, H, P): scratch for U^T's panels; y (N, dirs, H).
// states (dirs, S + 1, B, H) (states[d][s] = h_{s−1} of row r), acts (dirs, S, B, G): LSTM σ(i), σ(f), tanh(g),
// σ(o); GRU σ(r), σ(z), tanh(n); RNN h. cells (dirs, S, B, H): the LSTM cell, the GRU's U_n h_{s−1} (unused by
// the simple RNN). pre (dirs, B, gates · Hp): scratch for U h.
template <typename T>
void forward_impl(int64_t kind, const Tensor& gx, const Tensor& weight, const Tensor& packed, const Plan& plan,
                  const Tensor& y, const Tensor& states, const Tensor& acts, const Tensor& cells, const Tensor& pre) {
  constexpr int64_t P = kPanel<T>;
  const int64_t dirs = packed.size(0), chunks = packed.size(1), blocks = packed.size(2), hidden = packed.size(3);
  const int64_t steps = acts.size(1), batch = acts.size(2), gates = acts.size(3);
  const int64_t hp = chunks * P, width = blocks * hp;
  const T* gxp = ptr<T>(gx);
  T* wp = ptr<T>(packed);
  T *yp = ptr<T>(y), *sp = ptr<T>(states), *ap0 = ptr<T>(acts), *cp0 = ptr<T>(cells);
  schedule(dirs, chunks, hidden, P, packed.nbytes() / dirs, [&](int64_t d, const Share& own, bool sync) {
      pack_rows(ptr<T>(weight), wp, d, chunks, blocks, hidden, own);  // read only by this thread
      T* pp = ptr<T>(pre) + d * batch * width;
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t n = plan.active[s];
        if (n == 0) break;
        const T* h_prev = sp + (d * (steps + 1) + s) * batch * hidden;
        T* h_next = sp + (d * (steps + 1) + s + 1) * batch * hidden;
        for (int64_t c = own.c0; c < own.c1; ++c)
          for (int64_t g = 0; g < blocks; ++g)
            panel_product<T, false>(h_prev, hidden, n, wp + ((d * chunks + c) * blocks + g) * hidden * P, P, hidden,
                                    pp + g * hp + c * P, width);
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
        }
        if (sync) {
#pragma omp barrier
        }
      }
  });
}

// grad_y (N, dirs, H) -> grad_gx (N, dirs·G) (every valid frame is written) and grad_pre (dirs, S, B, G),
// ∂L/∂(U h_{s−1}) of every step (zero-initialised: rows that have stopped stay 0), from which the caller takes
// ∂L/∂U in one product. weight: U (dirs, G, H); packed (dirs, chunks, G, P): scratch for U's panels.
// dh, dc (dirs, B, Hp): zeros.
template <typename T>
void backward_impl(int64_t kind, const Tensor& grad_y, const Tensor& weight, const Tensor& packed, const Plan& plan,
                   const Tensor& states, const Tensor& acts, const Tensor& cells, const Tensor& grad_gx,
                   const Tensor& grad_pre, const Tensor& dh, const Tensor& dc) {
  constexpr int64_t P = kPanel<T>;
  const int64_t dirs = packed.size(0), chunks = packed.size(1), hp = chunks * P;
  const int64_t steps = acts.size(1), batch = acts.size(2), gates = acts.size(3), hidden = states.size(3);
  const T* gyp = ptr<T>(grad_y);
  T* wp = ptr<T>(packed);
  const T *sp = ptr<T>(states), *ap0 = ptr<T>(acts), *cp0 = ptr<T>(cells);
  T *ggp = ptr<T>(grad_gx), *gp0 = ptr<T>(grad_pre), *dh0 = ptr<T>(dh), *dc0 = ptr<T>(dc);
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
        }
        if (sync) {
#pragma omp barrier  // every unit's gate gradients are in before any thread's product reads them
        }
        // ∂L/∂h_{s−1} += ∂L/∂(U h_{s−1}) U, this thread's columns
        for (int64_t c = own.c0; c < own.c1; ++c)
          panel_product<T, true>(gp, gates, n, wp + (d * chunks + c) * gates * P, P, gates, dhp + c * P, hp);
      }
  });
}

template <typename F>
void dispatch(const Tensor& t, F&& run) {
  if (t.scalar_type() == at::kFloat) return run(float());
  if (t.scalar_type() == at::kDouble) return run(double());
  TORCH_CHECK(false, "DS2 recurrence: ", t.scalar_type(), " is not supported (float or double)");
}

Plan make_plan(const Tensor& order, const Tensor& lengths, const Tensor& starts, const Tensor& active) {
  for (const Tensor* t : {&order, &lengths, &starts, &active})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous() && t->device().is_cpu(),
                "DS2 recurrence: index tensors must be contiguous int64 on the CPU");
  return Plan{ptr<int64_t>(order), ptr<int64_t>(lengths), ptr<int64_t>(starts), ptr<int64_t>(active)};
}

int64_t panel_columns(const Tensor& t) { return t.scalar_type() == at::kDouble ? kPanel<double> : kPanel<float>; }

void check(const std::vector<Tensor>& buffers) {
  const Tensor& first = buffers.front();
  for (const Tensor& t : buffers)
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == first.scalar_type() && t.device().is_cpu(),
                "DS2 recurrence: tensors must be contiguous, on the CPU and of one dtype");
}

void forward(int64_t kind, const Tensor& gx, const Tensor& weight, const Tensor& packed, const Tensor& order,
             const Tensor& lengths, const Tensor& starts, const Tensor& active, const Tensor& y, const Tensor& states,
             const Tensor& acts, const Tensor& cells, const Tensor& pre) {
  const Plan plan = make_plan(order, lengths, starts, active);
  TORCH_CHECK(packed.size(4) == panel_columns(weight), "DS2 recurrence: panels of ", panel_columns(weight), " columns expected");
  check({gx, weight, packed, y, states, acts, cells, pre});
  dispatch(weight, [&](auto t) {
    forward_impl<decltype(t)>(kind, gx, weight, packed, plan, y, states, acts, cells, pre);
  });
}

void backward(int64_t kind, const Tensor& grad_y, const Tensor& weight, const Tensor& packed, const Tensor& order,
              const Tensor& lengths, const Tensor& starts, const Tensor& active, const Tensor& states,
              const Tensor& acts, const Tensor& cells, const Tensor& grad_gx, const Tensor& grad_pre,
              const Tensor& dh, const Tensor& dc) {
  const Plan plan = make_plan(order, lengths, starts, active);
  TORCH_CHECK(packed.size(3) == panel_columns(weight), "DS2 recurrence: panels of ", panel_columns(weight), " columns expected");
  check({grad_y, weight, packed, states, acts, cells, grad_gx, grad_pre, dh, dc});
  dispatch(weight, [&](auto t) {
    backward_impl<decltype(t)>(kind, grad_y, weight, packed, plan, states, acts, cells, grad_gx, grad_pre, dh, dc);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &forward, "DS2 recurrence over packed frames, forward (fills the given buffers)");
  module.def("backward", &backward, "DS2 recurrence over packed frames, back-propagation through time");
}
