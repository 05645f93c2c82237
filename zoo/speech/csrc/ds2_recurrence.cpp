// DeepSpeech2's recurrences (LSTM, GRU, simple RNN; arXiv 1512.02595 §3.1-3.4) on the CPU, given the
// batch-normalised input term B(W x) of every frame: per step only the W_h h_{t−1} product and one
// fused element-wise pass, forward and back-propagation through time. Built on first use by
// zoo/speech/deepspeech2.py (torch.utils.cpp_extension, PackedRecurrence), which allocates the buffers.
//
// Packed layout, as nn.utils.rnn.pack_padded_sequence but utterance-major: the valid frames of
// utterance b are rows starts[b] .. starts[b] + lengths[b] − 1 of gx (N, dirs·G) and y (N, dirs, H).
// The state rows are kept in the order `order` (utterances by decreasing length), so the rows still
// running at step s are a prefix [0, active[s]) and each step's product covers only those. Direction
// 0 reads frame t = s, direction 1 (backward in time) frame t = lengths[b] − 1 − s.
//
// Gate order and equations are torch's (nn.LSTM: i, f, g, o; nn.GRU: r, z, n with
// n = tanh(x_n + r ⊙ (U_n h)), h' = (1 − z) ⊙ n + z ⊙ h; the hidden-to-hidden biases are zero).
// Two element types: T (float or double) for the input term, gates, state and their gradients; M for
// what the per-step products read and write (T itself, or bfloat16 under autocast).

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

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

template <typename X>
X* ptr(const Tensor& t) {
  return reinterpret_cast<X*>(t.data_ptr());
}

constexpr int64_t kMinElements = 16384;  // a step smaller than this stays on one thread

template <typename F>
void for_rows(int64_t rows, int64_t cols, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kMinElements / std::max<int64_t>(1, cols));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

struct Plan {  // where state row r reads and writes at step s
  const int64_t *order, *lengths, *starts, *active;
  int64_t frame(int64_t r, int64_t s, int64_t direction) const {
    const int64_t b = order[r];
    return starts[b] + (direction == 0 ? s : lengths[b] - 1 - s);
  }
};

// gx (N, dirs·G) in T; weight_t (dirs, H, G) in M (U^T); y (N, dirs, H) in T.
// states (dirs, S + 1, B, H) in T (states[d][s] = h_{s−1} of row r), states_mm the same in M (may alias),
// acts (dirs, S, B, G) in T: LSTM σ(i), σ(f), tanh(g), σ(o); GRU σ(r), σ(z), tanh(n); RNN h.
// cells (dirs, S, B, H) in T: the LSTM cell, the GRU's U_n h_{s−1} (unused by the simple RNN).
// pre (dirs, B, G) in M: scratch for U h.
template <typename T, typename M>
void forward_impl(int64_t kind, const Tensor& gx, const Tensor& weight_t, const Plan& plan, const Tensor& y,
                  const Tensor& states, const Tensor& states_mm, const Tensor& acts, const Tensor& cells,
                  const Tensor& pre) {
  const int64_t dirs = weight_t.size(0), hidden = weight_t.size(1), gates = weight_t.size(2);
  const int64_t steps = acts.size(1), batch = acts.size(2);
  const bool low = !states_mm.is_same(states);
  const T* gxp = ptr<T>(gx);
  T* yp = ptr<T>(y);
  // The two directions are independent: one thread each (their products and passes then stay on that
  // thread), so a step costs no synchronisation; a forward-only layer spreads each step over the threads.
  at::parallel_for(0, dirs, 1, [&](int64_t d_begin, int64_t d_end) {
  for (int64_t d = d_begin; d < d_end; ++d) {
    const Tensor w = weight_t[d];
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t n = plan.active[s];
      if (n == 0) break;
      Tensor out = pre[d].narrow(0, 0, n);
      torch::mm_out(out, states_mm[d][s].narrow(0, 0, n), w);
      const M* pp = ptr<M>(pre) + d * batch * gates;
      const T* h_prev = ptr<T>(states) + (d * (steps + 1) + s) * batch * hidden;
      T* h_next = ptr<T>(states) + (d * (steps + 1) + s + 1) * batch * hidden;
      M* hm_next = ptr<M>(states_mm) + (d * (steps + 1) + s + 1) * batch * hidden;
      T* ap = ptr<T>(acts) + (d * steps + s) * batch * gates;
      T* cp = kind != kTanh && kind != kRelu ? ptr<T>(cells) + (d * steps + s) * batch * hidden : nullptr;
      for_rows(n, gates, [&](int64_t r) {
        const int64_t f = plan.frame(r, s, d);
        const T* x = gxp + f * dirs * gates + d * gates;
        const M* u = pp + r * gates;
        const T* hp = h_prev + r * hidden;
        T* h = h_next + r * hidden;
        T* a = ap + r * gates;
        if (kind == kLstm) {
          const T* c_prev = s == 0 ? nullptr : cp - batch * hidden + r * hidden;
          T* c = cp + r * hidden;
          for (int64_t j = 0; j < 2 * hidden; ++j) a[j] = sigmoid(static_cast<T>(x[j]) + static_cast<T>(u[j]));
          for (int64_t j = 2 * hidden; j < 3 * hidden; ++j) a[j] = std::tanh(static_cast<T>(x[j]) + static_cast<T>(u[j]));
          for (int64_t j = 3 * hidden; j < gates; ++j) a[j] = sigmoid(static_cast<T>(x[j]) + static_cast<T>(u[j]));
          for (int64_t k = 0; k < hidden; ++k) {
            c[k] = a[hidden + k] * (c_prev ? c_prev[k] : T(0)) + a[k] * a[2 * hidden + k];
            h[k] = a[3 * hidden + k] * std::tanh(c[k]);
          }
        } else if (kind == kGru) {
          for (int64_t j = 0; j < 2 * hidden; ++j) a[j] = sigmoid(static_cast<T>(x[j]) + static_cast<T>(u[j]));
          for (int64_t k = 0; k < hidden; ++k) {
            const T un = static_cast<T>(u[2 * hidden + k]);
            const T nn = std::tanh(static_cast<T>(x[2 * hidden + k]) + a[k] * un);
            a[2 * hidden + k] = nn;
            cp[r * hidden + k] = un;
            const T z = a[hidden + k];
            h[k] = (T(1) - z) * nn + z * hp[k];
          }
        } else {
          for (int64_t k = 0; k < hidden; ++k) {
            const T v = static_cast<T>(x[k]) + static_cast<T>(u[k]);
            h[k] = kind == kTanh ? std::tanh(v) : std::max(v, T(0));
            a[k] = h[k];
          }
        }
        T* out_row = yp + (f * dirs + d) * hidden;
        std::copy(h, h + hidden, out_row);
        if (low) {
          M* hm = hm_next + r * hidden;
          for (int64_t k = 0; k < hidden; ++k) hm[k] = static_cast<M>(h[k]);
        }
      });
    }
  }
  });
}

// grad_y (N, dirs, H) in T -> grad_gx (N, dirs·G) in T (every valid frame is written) and grad_pre
// (dirs, S, B, G) in M, ∂L/∂(U h_{s−1}) of every step (zero-initialised: rows that have stopped stay 0),
// from which the caller takes ∂L/∂U in one product. weight (dirs, G, H) in M. dh, dc (dirs, B, H): zeros.
template <typename T, typename M>
void backward_impl(int64_t kind, const Tensor& grad_y, const Tensor& weight, const Plan& plan, const Tensor& states,
                   const Tensor& acts, const Tensor& cells, const Tensor& grad_gx, const Tensor& grad_pre,
                   const Tensor& dh, const Tensor& dc) {
  const int64_t dirs = weight.size(0), gates = weight.size(1), hidden = weight.size(2);
  const int64_t steps = acts.size(1), batch = acts.size(2);
  const T* gyp = ptr<T>(grad_y);
  T* ggp = ptr<T>(grad_gx);
  at::parallel_for(0, dirs, 1, [&](int64_t d_begin, int64_t d_end) {  // one thread per direction
  for (int64_t d = d_begin; d < d_end; ++d) {
    T* dhp = ptr<T>(dh) + d * batch * hidden;
    T* dcp = ptr<T>(dc) + d * batch * hidden;
    const Tensor w = weight[d];
    for (int64_t s = steps - 1; s >= 0; --s) {
      const int64_t n = plan.active[s];
      if (n == 0) continue;
      const T* h_prev = ptr<T>(states) + (d * (steps + 1) + s) * batch * hidden;
      const T* ap = ptr<T>(acts) + (d * steps + s) * batch * gates;
      const T* cp = kind != kTanh && kind != kRelu ? ptr<T>(cells) + (d * steps + s) * batch * hidden : nullptr;
      M* gp = ptr<M>(grad_pre) + (d * steps + s) * batch * gates;
      for_rows(n, gates, [&](int64_t r) {
        const int64_t f = plan.frame(r, s, d);
        const T* gy = gyp + (f * dirs + d) * hidden;
        const T* a = ap + r * gates;
        const T* hp = h_prev + r * hidden;
        T* dhr = dhp + r * hidden;
        T* gx = ggp + f * dirs * gates + d * gates;
        M* g = gp + r * gates;
        for (int64_t k = 0; k < hidden; ++k) dhr[k] += gy[k];
        if (kind == kLstm) {
          const T* c = cp + r * hidden;
          const T* c_prev = s == 0 ? nullptr : cp - batch * hidden + r * hidden;
          T* dcr = dcp + r * hidden;
          for (int64_t k = 0; k < hidden; ++k) {
            const T i = a[k], fg = a[hidden + k], gg = a[2 * hidden + k], o = a[3 * hidden + k];
            const T tc = std::tanh(c[k]);
            const T dct = dcr[k] + dhr[k] * o * (T(1) - tc * tc);
            const T cpv = c_prev ? c_prev[k] : T(0);
            const T vi = dct * gg * i * (T(1) - i), vf = dct * cpv * fg * (T(1) - fg);
            const T vg = dct * i * (T(1) - gg * gg), vo = dhr[k] * tc * o * (T(1) - o);
            gx[k] = vi;
            g[k] = static_cast<M>(vi);
            gx[hidden + k] = vf;
            g[hidden + k] = static_cast<M>(vf);
            gx[2 * hidden + k] = vg;
            g[2 * hidden + k] = static_cast<M>(vg);
            gx[3 * hidden + k] = vo;
            g[3 * hidden + k] = static_cast<M>(vo);
            dcr[k] = dct * fg;
            dhr[k] = T(0);
          }
        } else if (kind == kGru) {
          for (int64_t k = 0; k < hidden; ++k) {
            const T rr = a[k], z = a[hidden + k], nn = a[2 * hidden + k], un = cp[r * hidden + k];
            const T dn = dhr[k] * (T(1) - z) * (T(1) - nn * nn);  // ∂L/∂(x_n + r U_n h)
            const T dz = dhr[k] * (hp[k] - nn) * z * (T(1) - z);
            const T dr = dn * un * rr * (T(1) - rr);
            gx[k] = dr;
            g[k] = static_cast<M>(dr);
            gx[hidden + k] = dz;
            g[hidden + k] = static_cast<M>(dz);
            gx[2 * hidden + k] = dn;
            g[2 * hidden + k] = static_cast<M>(dn * rr);
            dhr[k] = dhr[k] * z;  // the direct path h' = ... + z h; the product adds U^T g below
          }
        } else {
          for (int64_t k = 0; k < hidden; ++k) {
            const T h = a[k];
            const T v = dhr[k] * (kind == kTanh ? T(1) - h * h : (h > T(0) ? T(1) : T(0)));
            gx[k] = v;
            g[k] = static_cast<M>(v);
            dhr[k] = T(0);
          }
        }
      });
      // ∂L/∂h_{s−1} += ∂L/∂(U h_{s−1}) U
      const Tensor product = torch::mm(grad_pre[d][s].narrow(0, 0, n), w);
      const M* pp = ptr<M>(product);
      for_rows(n, hidden, [&](int64_t r) {
        T* dhr = dhp + r * hidden;
        const M* pr = pp + r * hidden;
        for (int64_t k = 0; k < hidden; ++k) dhr[k] += static_cast<T>(pr[k]);
      });
    }
  }
  });
}

template <typename F>
void dispatch(const Tensor& state, const Tensor& product, F&& run) {
  const auto t = state.scalar_type(), m = product.scalar_type();
  if (t == at::kFloat && m == at::kFloat) return run(float(), float());
  if (t == at::kDouble && m == at::kDouble) return run(double(), double());
  if (t == at::kFloat && m == at::kBFloat16) return run(float(), c10::BFloat16());
  TORCH_CHECK(false, "DS2 recurrence: state ", t, " with products in ", m, " is not supported");
}

Plan make_plan(const Tensor& order, const Tensor& lengths, const Tensor& starts, const Tensor& active) {
  for (const Tensor* t : {&order, &lengths, &starts, &active})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous() && t->device().is_cpu(), "DS2 recurrence: index tensors must be contiguous int64 on the CPU");
  return Plan{ptr<int64_t>(order), ptr<int64_t>(lengths), ptr<int64_t>(starts), ptr<int64_t>(active)};
}

void forward(int64_t kind, const Tensor& gx, const Tensor& weight_t, const Tensor& order, const Tensor& lengths,
             const Tensor& starts, const Tensor& active, const Tensor& y, const Tensor& states,
             const Tensor& states_mm, const Tensor& acts, const Tensor& cells, const Tensor& pre) {
  const Plan plan = make_plan(order, lengths, starts, active);
  dispatch(states, weight_t, [&](auto t, auto m) {
    forward_impl<decltype(t), decltype(m)>(kind, gx, weight_t, plan, y, states, states_mm, acts, cells, pre);
  });
}

void backward(int64_t kind, const Tensor& grad_y, const Tensor& weight, const Tensor& order, const Tensor& lengths,
              const Tensor& starts, const Tensor& active, const Tensor& states, const Tensor& acts,
              const Tensor& cells, const Tensor& grad_gx, const Tensor& grad_pre, const Tensor& dh,
              const Tensor& dc) {
  const Plan plan = make_plan(order, lengths, starts, active);
  dispatch(states, weight, [&](auto t, auto m) {
    backward_impl<decltype(t), decltype(m)>(kind, grad_y, weight, plan, states, acts, cells, grad_gx, grad_pre, dh,
                                            dc);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &forward, "DS2 recurrence over packed frames, forward (fills the given buffers)");
  module.def("backward", &backward, "DS2 recurrence over packed frames, back-propagation through time");
}
