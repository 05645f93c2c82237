// A BN-LSTM layer's work after W_x x (Cooijmans et al., arXiv 1603.09025, eqs. 6-8) on the CPU: the
// loop over time, forward and back-propagation through time, with the W_h h_{t−1} product and one
// fused pass per step for both normalisations of eq. 6, the gates, the cell and eq. 8's normalisation.
// Built on first use by zoo.text.bn_recurrence_cpp (torch.utils.cpp_extension), which documents the
// buffers; the equations and their derivatives are those of zoo/text/bn_recurrence.py.
//
// Two element types: T (float or double) for the state, statistics, gates and cell; M for what the
// matrix products read and write (W_x x, W_h h_{t−1}, h_{t−1} as their operand, and their gradients):
// T itself, or bfloat16 / float16 under autocast, read and written here without separate casts.
//
// Layout: every per-step tensor is (T, B, F) contiguous, so step t is a contiguous (B, F) block.
// Column loops run over F innermost (contiguous), so the compiler vectorises them (exp and tanh
// through glibc's vector math library).

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

// glibc declares its vector exp / tanh (libmvec) to the compiler only under -ffinite-math-only, which
// would also let it assume that no NaN or Inf ever occurs; declared here, NaN and Inf still propagate.
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
using Tensors = std::vector<Tensor>;

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename X>
X* ptr(const Tensor& t, int64_t step = 0) {  // step `step` of a contiguous (T, ...) tensor
  return reinterpret_cast<X*>(t.data_ptr()) + step * (t.numel() / t.size(0));
}

template <typename X>
const X* optional_ptr(const Tensor& t, int64_t offset) {
  return t.defined() && t.numel() > 0 ? reinterpret_cast<const X*>(t.data_ptr()) + offset : nullptr;
}

// The loops are split over torch's intra-op threads (torch.set_num_threads; the OpenMP runtime torch
// ships), in chunks of at least kMinElements elements so that a small step stays on one thread.
constexpr int64_t kMinElements = 16384;

template <typename F>
void for_rows(int64_t rows, int64_t cols, const F& f) {  // f(b) for every row b
  const int64_t grain = std::max<int64_t>(1, kMinElements / std::max<int64_t>(1, cols));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) f(b);
  });
}

template <typename F>
void for_column_ranges(int64_t rows, int64_t cols, const F& f) {  // f(j0, j1) over ranges of columns
  at::parallel_for(0, cols, std::max<int64_t>(64, kMinElements / std::max<int64_t>(1, rows)), f);
}

// mean, biased variance and 1/σ of one step over the rows of a (rows, cols) block: in training the batch's,
// weighted by m (0/1 per row, or null: every row), n = the number of weighted rows (a step without rows gets
// mean 0 and variance 1); in evaluation the running ones.
template <typename T, typename X>
void step_moments(const X* a, int64_t rows, int64_t cols, const T* m, T n, bool training, const T* run_mean,
                  const T* run_var, T eps, T* mean, T* var, T* invstd) {
  for_column_ranges(rows, cols, [&](int64_t j0, int64_t j1) {
    if (training) {
      std::fill(mean + j0, mean + j1, T(0));
      std::fill(var + j0, var + j1, T(0));
      const T safe = std::max(n, T(1));
      for (int64_t b = 0; b < rows; ++b) {
        const T w = m ? m[b] : T(1);
        const X* row = a + b * cols;
        for (int64_t j = j0; j < j1; ++j) mean[j] += w * static_cast<T>(row[j]);
      }
      for (int64_t j = j0; j < j1; ++j) mean[j] /= safe;
      for (int64_t b = 0; b < rows; ++b) {
        const T w = m ? m[b] : T(1);
        const X* row = a + b * cols;
        for (int64_t j = j0; j < j1; ++j) {
          const T d = static_cast<T>(row[j]) - mean[j];
          var[j] += w * d * d;
        }
      }
      for (int64_t j = j0; j < j1; ++j) var[j] = n > 0 ? var[j] / safe : T(1);
    } else {
      std::copy(run_mean + j0, run_mean + j1, mean + j0);
      std::copy(run_var + j0, run_var + j1, var + j0);
    }
    for (int64_t j = j0; j < j1; ++j) invstd[j] = T(1) / std::sqrt(var[j] + eps);
  });
}

// Σ_b g and Σ_b g x̂ over the rows of a (rows, cols) block, x̂ = (a − μ)/σ: ∂L/∂β and ∂L/∂γ of
// y = γ x̂ (+ β). Rows with m_b = 0 carry g_b = 0 (their state passes around the step): no weights needed.
template <typename T, typename X>
void norm_sums(const T* g, const X* a, int64_t rows, int64_t cols, const T* mean, const T* invstd, T* sum_g,
               T* sum_gx) {
  for_column_ranges(rows, cols, [&](int64_t j0, int64_t j1) {
    std::fill(sum_g + j0, sum_g + j1, T(0));
    std::fill(sum_gx + j0, sum_gx + j1, T(0));
    for (int64_t b = 0; b < rows; ++b) {
      const T* gb = g + b * cols;
      const X* ab = a + b * cols;
      for (int64_t j = j0; j < j1; ++j) {
        sum_g[j] += gb[j];
        sum_gx[j] += gb[j] * (static_cast<T>(ab[j]) - mean[j]) * invstd[j];
      }
    }
  });
}

// ∂L/∂a from g = ∂L/∂y and the sums of norm_sums. In training the statistics depend on a:
// ∂L/∂a_b = γ/σ [g_b − (m_b/n) Σ_j m_j g_j − (m_b/n) x̂_b Σ_j m_j g_j x̂_j]; in evaluation ∂L/∂a_b = γ/σ g_b.
template <typename T, typename X, typename G>
void norm_input_grad(const T* g, const X* a, int64_t rows, int64_t cols, const T* m, T n, bool training,
                     const T* gamma, const T* mean, const T* invstd, const T* sum_g, const T* sum_gx, G* grad_a) {
  const T inv_n = training ? T(1) / std::max(n, T(1)) : T(0);
  for_rows(rows, cols, [&](int64_t b) {
    const T w = training ? (m ? m[b] : T(1)) * inv_n : T(0);
    const T* gb = g + b * cols;
    const X* ab = a + b * cols;
    G* out = grad_a + b * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const T xhat = (static_cast<T>(ab[j]) - mean[j]) * invstd[j];
      out[j] = static_cast<G>(gamma[j] * invstd[j] * (gb[j] - w * (sum_g[j] + xhat * sum_gx[j])));
    }
  });
}

// params:  γ_x, γ_h, γ_c, β_c, b.  running (evaluation only, else empty): mean and variance of x, h, c per step.
// buffers: states (T+1, B, H; states[t] = h_{t−1}), the same in M for the product, cells (the state after
//          masking), c_t before masking, W_h h_{t−1} (M), σ(f̃, ĩ, õ), tanh(g̃), tanh(BN(c_t)).
// moments: mean, biased variance and 1/σ of x, h and c, per step.
template <typename T, typename M>
void forward_impl(const Tensor& wx, const Tensor& weight_t, const Tensors& params, const Tensor& mask,
                  const Tensor& counts, const Tensors& running, bool training, double eps_, const Tensor& c0,
                  const Tensors& buffers, const Tensors& moments) {
  const int64_t steps = wx.size(0), batch = wx.size(1), four = wx.size(2), hidden = four / 4;
  const T eps = static_cast<T>(eps_);
  const Tensor &states = buffers[0], &states_mm = buffers[1], &cells = buffers[2], &c_pre = buffers[3],
               &pre_h = buffers[4];
  const bool low = states_mm.scalar_type() != states.scalar_type();
  const bool masked = mask.defined() && mask.numel() > 0;
  const T *gamma_x = ptr<T>(params[0]), *gamma_h = ptr<T>(params[1]), *gamma_c = ptr<T>(params[2]),
          *beta_c = ptr<T>(params[3]), *bias = ptr<T>(params[4]);
  auto run = [&](int i, int64_t t) -> const T* { return training ? nullptr : ptr<T>(running[i], t); };
  std::vector<T> scale_x(four), scale_h(four), shift(four);
  for (int64_t t = 0; t < steps; ++t) {
    Tensor a = pre_h[t];
    torch::mm_out(a, states_mm[t], weight_t);
    const T* m = optional_ptr<T>(mask, t * batch);
    const T n = masked ? ptr<T>(counts)[t] : static_cast<T>(batch);
    const M* ap = ptr<M>(pre_h, t);
    const M* xp = ptr<M>(wx, t);
    T *mx = ptr<T>(moments[0], t), *ix = ptr<T>(moments[2], t);
    T *mh = ptr<T>(moments[3], t), *ih = ptr<T>(moments[5], t);
    step_moments(xp, batch, four, m, n, training, run(0, t), run(1, t), eps, mx, ptr<T>(moments[1], t), ix);
    step_moments(ap, batch, four, m, n, training, run(2, t), run(3, t), eps, mh, ptr<T>(moments[4], t), ih);
    for (int64_t j = 0; j < four; ++j) {  // eq. 6 as one affine map of each term, then the nonlinearities
      scale_x[j] = ix[j] * gamma_x[j];
      scale_h[j] = ih[j] * gamma_h[j];
      shift[j] = bias[j] - mx[j] * scale_x[j] - mh[j] * scale_h[j];
    }
    const T* c_prev = t == 0 ? ptr<T>(c0) : ptr<T>(cells, t - 1);
    const T* h_prev = ptr<T>(states, t);
    T* sp = ptr<T>(buffers[5], t);
    T* gp = ptr<T>(buffers[6], t);
    T* cp = ptr<T>(c_pre, t);
    for_rows(batch, four, [&](int64_t b) {  // gates (eq. 6) and the cell (eq. 7)
      const M* arow = ap + b * four;
      const M* xrow = xp + b * four;
      T* srow = sp + b * 3 * hidden;
      T* grow = gp + b * hidden;
      T* crow = cp + b * hidden;
      const T* cprow = c_prev + b * hidden;
      for (int64_t j = 0; j < 3 * hidden; ++j)
        srow[j] = sigmoid(static_cast<T>(arow[j]) * scale_h[j] + static_cast<T>(xrow[j]) * scale_x[j] + shift[j]);
      for (int64_t k = 0, j = 3 * hidden; k < hidden; ++k, ++j)
        grow[k] = std::tanh(static_cast<T>(arow[j]) * scale_h[j] + static_cast<T>(xrow[j]) * scale_x[j] + shift[j]);
      for (int64_t k = 0; k < hidden; ++k) crow[k] = srow[k] * cprow[k] + srow[hidden + k] * grow[k];
    });
    T *mc = ptr<T>(moments[6], t), *ic = ptr<T>(moments[8], t);
    step_moments(static_cast<const T*>(cp), batch, hidden, m, n, training, run(4, t), run(5, t), eps, mc,
                 ptr<T>(moments[7], t), ic);
    for (int64_t k = 0; k < hidden; ++k) {
      scale_h[k] = ic[k] * gamma_c[k];
      shift[k] = beta_c[k] - mc[k] * scale_h[k];
    }
    T* tcp = ptr<T>(buffers[7], t);
    T* hp = ptr<T>(states, t + 1);
    M* hmp = ptr<M>(states_mm, t + 1);
    T* cellp = ptr<T>(cells, t);
    for_rows(batch, hidden, [&](int64_t b) {  // eq. 8; padded rows keep the previous state
      const T* srow = sp + b * 3 * hidden;
      const T* crow = cp + b * hidden;
      T* trow = tcp + b * hidden;
      T* hrow = hp + b * hidden;
      for (int64_t k = 0; k < hidden; ++k) {
        trow[k] = std::tanh(crow[k] * scale_h[k] + shift[k]);
        hrow[k] = srow[2 * hidden + k] * trow[k];
      }
      if (m && m[b] == T(0)) {
        std::copy(h_prev + b * hidden, h_prev + (b + 1) * hidden, hrow);
        std::copy(c_prev + b * hidden, c_prev + (b + 1) * hidden, cellp + b * hidden);
      } else if (masked) {
        std::copy(crow, crow + hidden, cellp + b * hidden);
      }
      if (low) {
        M* hmrow = hmp + b * hidden;
        for (int64_t k = 0; k < hidden; ++k) hmrow[k] = static_cast<M>(hrow[k]);
      }
    });
  }
}

// moments: mean and 1/σ of x, h and c.  grads: ∂L/∂γ_x, ∂L/∂γ_h, ∂L/∂b, ∂L/∂γ_c, ∂L/∂β_c per step.
// grad_wx, grad_a (M): ∂L/∂(W_x x) and ∂L/∂(W_h h_{t−1}) of every step.
// dh, dc: in, ∂L/∂h_{T−1} and ∂L/∂c_{T−1}; out, ∂L/∂h0 and ∂L/∂c0.
template <typename T, typename M>
void backward_impl(const Tensor& grad_out, const Tensor& weight_mm, const Tensors& params, const Tensor& mask,
                   const Tensor& counts, bool training, const Tensor& c0, const Tensor& wx, const Tensors& buffers,
                   const Tensors& moments, const Tensor& grad_wx, const Tensor& grad_a, const Tensors& grads,
                   const Tensor& dh, const Tensor& dc) {
  const Tensor &cells = buffers[2], &c_pre = buffers[3], &pre_h = buffers[4];
  const int64_t steps = c_pre.size(0), batch = c_pre.size(1), hidden = c_pre.size(2), four = 4 * hidden;
  const bool masked = mask.defined() && mask.numel() > 0;
  const T *gamma_x = ptr<T>(params[0]), *gamma_h = ptr<T>(params[1]), *gamma_c = ptr<T>(params[2]);
  std::vector<T> dgate(batch * four), grad_y(batch * hidden), grad_c(batch * hidden), sum_g(four), dh_pass, dc_pass;
  if (masked) {
    dh_pass.resize(batch * hidden);
    dc_pass.resize(batch * hidden);
  }
  T* dhp = ptr<T>(dh);
  T* dcp = ptr<T>(dc);
  for (int64_t t = steps - 1; t >= 0; --t) {
    const T* m = optional_ptr<T>(mask, t * batch);
    const T n = masked ? ptr<T>(counts)[t] : static_cast<T>(batch);
    if (m) {  // padded rows: the gradient passes straight to the previous state
      for (int64_t b = 0; b < batch; ++b) {
        const bool real = m[b] != T(0);
        for (int64_t k = 0; k < hidden; ++k) {
          const int64_t i = b * hidden + k;
          dh_pass[i] = real ? T(0) : dhp[i];
          dc_pass[i] = real ? T(0) : dcp[i];
          if (!real) dhp[i] = dcp[i] = T(0);
        }
      }
    }
    const T* sp = ptr<T>(buffers[5], t);
    const T* gp = ptr<T>(buffers[6], t);
    const T* tcp = ptr<T>(buffers[7], t);
    for_rows(batch, hidden, [&](int64_t b) {  // h_t = o ⊙ tanh(y_c)
      const T* srow = sp + b * 3 * hidden;
      const T* trow = tcp + b * hidden;
      const T* dhrow = dhp + b * hidden;
      T* drow = dgate.data() + b * four;
      for (int64_t k = 0; k < hidden; ++k) {
        const T o = srow[2 * hidden + k];
        drow[2 * hidden + k] = dhrow[k] * trow[k] * o * (T(1) - o);
        grad_y[b * hidden + k] = dhrow[k] * o * (T(1) - trow[k] * trow[k]);
      }
    });
    const T *cpre = ptr<T>(c_pre, t), *mean_c = ptr<T>(moments[4], t), *invstd_c = ptr<T>(moments[5], t);
    T *sum_gy = ptr<T>(grads[4], t), *sum_gyx = ptr<T>(grads[3], t);  // ∂L/∂β_c, ∂L/∂γ_c of the step
    norm_sums(grad_y.data(), cpre, batch, hidden, mean_c, invstd_c, sum_gy, sum_gyx);
    norm_input_grad(grad_y.data(), cpre, batch, hidden, m, n, training, gamma_c, mean_c, invstd_c, sum_gy, sum_gyx,
                    grad_c.data());
    const T* c_prev = t == 0 ? ptr<T>(c0) : ptr<T>(cells, t - 1);
    for_rows(batch, four, [&](int64_t b) {  // c_t = f ⊙ c_{t−1} + i ⊙ g, through σ and tanh
      const T* srow = sp + b * 3 * hidden;
      const T* grow = gp + b * hidden;
      const T* cprow = c_prev + b * hidden;
      T* drow = dgate.data() + b * four;
      T* dcrow = dcp + b * hidden;
      const T* gcrow = grad_c.data() + b * hidden;
      for (int64_t k = 0; k < hidden; ++k) {
        const T f = srow[k], i = srow[hidden + k], gg = grow[k];
        const T d = gcrow[k] + dcrow[k];
        drow[k] = d * cprow[k] * f * (T(1) - f);
        drow[hidden + k] = d * gg * i * (T(1) - i);
        drow[3 * hidden + k] = d * i * (T(1) - gg * gg);
        dcrow[k] = d * f;
      }
    });
    // gates = BN(W_x x_t; γ_x, 0) + BN(a_t; γ_h, 0) + b: both normalisations see the same ∂L/∂gates,
    // whose column sums are ∂L/∂b (the recurrent term has no β)
    const M *xp = ptr<M>(wx, t), *ap = ptr<M>(pre_h, t);
    const T *mean_x = ptr<T>(moments[0], t), *invstd_x = ptr<T>(moments[1], t);
    const T *mean_h = ptr<T>(moments[2], t), *invstd_h = ptr<T>(moments[3], t);
    T *sum_gate = ptr<T>(grads[2], t), *sum_gx_x = ptr<T>(grads[0], t), *sum_gx_h = ptr<T>(grads[1], t);
    norm_sums(dgate.data(), xp, batch, four, mean_x, invstd_x, sum_gate, sum_gx_x);
    norm_sums(dgate.data(), ap, batch, four, mean_h, invstd_h, sum_g.data(), sum_gx_h);  // sum_g: sum_gate again
    norm_input_grad(dgate.data(), xp, batch, four, m, n, training, gamma_x, mean_x, invstd_x, sum_gate, sum_gx_x,
                    ptr<M>(grad_wx, t));
    norm_input_grad(dgate.data(), ap, batch, four, m, n, training, gamma_h, mean_h, invstd_h, sum_gate, sum_gx_h,
                    ptr<M>(grad_a, t));
    // ∂L/∂h_{t−1} = ∂L/∂a_t W_h + ∂L/∂h_{t−1} from above (the output at step t − 1)
    const Tensor product = torch::mm(grad_a[t], weight_mm);
    const M* pp = ptr<M>(product);
    const T* above = t > 0 ? ptr<T>(grad_out, t - 1) : nullptr;
    for_rows(batch, hidden, [&](int64_t b) {
      for (int64_t i = b * hidden; i < (b + 1) * hidden; ++i) dhp[i] = static_cast<T>(pp[i]) + (above ? above[i] : T(0));
    });
    if (m) {
      for (int64_t i = 0; i < batch * hidden; ++i) {
        dhp[i] += dh_pass[i];
        dcp[i] += dc_pass[i];
      }
    }
  }
}

// T from the state and statistics (float / double), M from the products' operands (T, or bf16 / f16 for float).
template <typename F>
void dispatch(const Tensor& state, const Tensor& product, F&& run) {
  const auto t = state.scalar_type(), m = product.scalar_type();
  if (t == at::kFloat && m == at::kFloat) return run(float(), float());
  if (t == at::kDouble && m == at::kDouble) return run(double(), double());
  if (t == at::kFloat && m == at::kBFloat16) return run(float(), c10::BFloat16());
  if (t == at::kFloat && m == at::kHalf) return run(float(), c10::Half());
  TORCH_CHECK(false, "BN-LSTM recurrence: state ", t, " with products in ", m, " is not supported");
}

void forward(const Tensor& wx, const Tensor& weight_t, const Tensors& params, const Tensor& mask, const Tensor& counts,
             const Tensors& running, bool training, double eps, const Tensor& c0, const Tensors& buffers,
             const Tensors& moments) {
  dispatch(c0, wx, [&](auto t, auto m) {
    forward_impl<decltype(t), decltype(m)>(wx, weight_t, params, mask, counts, running, training, eps, c0, buffers,
                                           moments);
  });
}

void backward(const Tensor& grad_out, const Tensor& weight_mm, const Tensors& params, const Tensor& mask,
              const Tensor& counts, bool training, const Tensor& c0, const Tensor& wx, const Tensors& buffers,
              const Tensors& moments, const Tensor& grad_wx, const Tensor& grad_a, const Tensors& grads,
              const Tensor& dh, const Tensor& dc) {
  dispatch(c0, wx, [&](auto t, auto m) {
    backward_impl<decltype(t), decltype(m)>(grad_out, weight_mm, params, mask, counts, training, c0, wx, buffers,
                                            moments, grad_wx, grad_a, grads, dh, dc);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &forward, "BN-LSTM recurrence, forward over all steps (fills the given buffers)");
  module.def("backward", &backward, "BN-LSTM recurrence, back-propagation through time (fills the given buffers)");
}
