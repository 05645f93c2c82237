// The recurrent half of a BN-LSTM layer (Cooijmans et al., arXiv 1603.09025, eqs. 6-8) on the CPU:
// the loop over time, forward and back-propagation through time, with one fused pass per step for
// the batch norms, gates and cell. Built on first use by zoo.text.bn_recurrence_cpp
// (torch.utils.cpp_extension); the math is the same as zoo/text/bn_recurrence.py, which documents it.
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

// Batch statistics of one step over the rows of a (rows, cols) block, weighted by m (0/1 per row, or
// null: every row), n = the number of weighted rows. A step without rows gets mean 0 and variance 1.
template <typename T>
void batch_moments(const T* a, int64_t rows, int64_t cols, const T* m, T n, T* mean, T* var) {
  std::fill(mean, mean + cols, T(0));
  std::fill(var, var + cols, T(0));
  const T safe = std::max(n, T(1));
  for (int64_t b = 0; b < rows; ++b) {
    const T w = m ? m[b] : T(1);
    const T* row = a + b * cols;
    for (int64_t j = 0; j < cols; ++j) mean[j] += w * row[j];
  }
  for (int64_t j = 0; j < cols; ++j) mean[j] /= safe;
  for (int64_t b = 0; b < rows; ++b) {
    const T w = m ? m[b] : T(1);
    const T* row = a + b * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const T d = row[j] - mean[j];
      var[j] += w * d * d;
    }
  }
  for (int64_t j = 0; j < cols; ++j) var[j] = n > 0 ? var[j] / safe : T(1);
}

// mean, var (biased) and 1/σ of one step: the batch's in training, the running ones in evaluation.
template <typename T>
void step_moments(const T* a, int64_t rows, int64_t cols, const T* m, T n, bool training, const T* run_mean,
                  const T* run_var, T eps, T* mean, T* var, T* invstd) {
  if (training) {
    batch_moments(a, rows, cols, m, n, mean, var);
  } else {
    std::copy(run_mean, run_mean + cols, mean);
    std::copy(run_var, run_var + cols, var);
  }
  for (int64_t j = 0; j < cols; ++j) invstd[j] = T(1) / std::sqrt(var[j] + eps);
}

// ∂L/∂a of y = γ (a − μ)/σ (+ β) from g = ∂L/∂y, and Σ_b g x̂ (∂L/∂γ), Σ_b g (∂L/∂β). In training the
// statistics depend on a: ∂L/∂a_b = γ/σ [g_b − (m_b/n) Σ_j m_j g_j − (m_b/n) x̂_b Σ_j m_j g_j x̂_j].
// Rows with m_b = 0 carry g_b = 0 (their state passes around the step), so the sums need no weights.
template <typename T>
void norm_backward(const T* g, const T* a, int64_t rows, int64_t cols, const T* m, T n, bool training,
                   const T* gamma, const T* mean, const T* invstd, T* grad_a, T* grad_gamma, T* grad_beta) {
  std::fill(grad_gamma, grad_gamma + cols, T(0));
  std::fill(grad_beta, grad_beta + cols, T(0));
  for (int64_t b = 0; b < rows; ++b) {
    const T* gb = g + b * cols;
    const T* ab = a + b * cols;
    for (int64_t j = 0; j < cols; ++j) {
      grad_beta[j] += gb[j];
      grad_gamma[j] += gb[j] * (ab[j] - mean[j]) * invstd[j];
    }
  }
  const T inv_n = training ? T(1) / std::max(n, T(1)) : T(0);
  for (int64_t b = 0; b < rows; ++b) {
    const T w = training ? (m ? m[b] : T(1)) * inv_n : T(0);
    const T* gb = g + b * cols;
    const T* ab = a + b * cols;
    T* out = grad_a + b * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const T xhat = (ab[j] - mean[j]) * invstd[j];
      out[j] = gamma[j] * invstd[j] * (gb[j] - w * (grad_beta[j] + xhat * grad_gamma[j]));
    }
  }
}

template <typename T>
const T* optional_ptr(const Tensor& t, int64_t offset) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() + offset : nullptr;
}

template <typename T>
T* step_ptr(const Tensor& t, int64_t step) {  // step `step` of a contiguous (T, ...) tensor
  return t.data_ptr<T>() + step * (t.numel() / t.size(0));
}

// params:  γ_x, γ_h, γ_c, β_c, b.  running (evaluation only, else empty): mean and variance of x, h, c per step.
// buffers: states (T+1, B, H; states[t] = h_{t−1}), states in the product's dtype, cells (the state after
//          masking), c_t before masking, W_h h_{t−1}, σ(f̃, ĩ, õ), tanh(g̃), tanh(BN(c_t)).
// moments: mean, biased variance and 1/σ of x, h and c, per step.
template <typename T>
void forward_impl(const Tensor& wx, const Tensor& weight_t, const Tensors& params, const Tensor& mask,
                  const Tensor& counts, const Tensors& running, bool training, double eps_, const Tensor& c0,
                  const Tensors& buffers, const Tensors& moments) {
  const int64_t steps = wx.size(0), batch = wx.size(1), four = wx.size(2), hidden = four / 4;
  const T eps = static_cast<T>(eps_);
  const Tensor &states = buffers[0], &states_mm = buffers[1], &cells = buffers[2], &c_pre = buffers[3],
               &pre_h = buffers[4];
  const bool low = states_mm.scalar_type() != states.scalar_type();
  const bool masked = mask.defined() && mask.numel() > 0;
  const T *gamma_x = params[0].data_ptr<T>(), *gamma_h = params[1].data_ptr<T>(), *gamma_c = params[2].data_ptr<T>(),
          *beta_c = params[3].data_ptr<T>(), *bias = params[4].data_ptr<T>();
  const Tensor none;
  auto run = [&](int i) -> const Tensor& { return training ? none : running[i]; };
  std::vector<T> scale_x(four), scale_h(four), shift(four);
  for (int64_t t = 0; t < steps; ++t) {
    Tensor a = pre_h[t];
    if (low) {
      a.copy_(torch::mm(states_mm[t], weight_t));
    } else {
      torch::mm_out(a, states[t], weight_t);
    }
    const T* m = optional_ptr<T>(mask, t * batch);
    const T n = masked ? counts.data_ptr<T>()[t] : static_cast<T>(batch);
    const T* ap = a.data_ptr<T>();
    const T* xp = step_ptr<T>(wx, t);
    T *mx = step_ptr<T>(moments[0], t), *ix = step_ptr<T>(moments[2], t);
    T *mh = step_ptr<T>(moments[3], t), *ih = step_ptr<T>(moments[5], t);
    step_moments(xp, batch, four, m, n, training, optional_ptr<T>(run(0), t * four), optional_ptr<T>(run(1), t * four),
                 eps, mx, step_ptr<T>(moments[1], t), ix);
    step_moments(ap, batch, four, m, n, training, optional_ptr<T>(run(2), t * four), optional_ptr<T>(run(3), t * four),
                 eps, mh, step_ptr<T>(moments[4], t), ih);
    for (int64_t j = 0; j < four; ++j) {  // eq. 6 as one affine map of each term, then the nonlinearities
      scale_x[j] = ix[j] * gamma_x[j];
      scale_h[j] = ih[j] * gamma_h[j];
      shift[j] = bias[j] - mx[j] * scale_x[j] - mh[j] * scale_h[j];
    }
    const T* c_prev = t == 0 ? c0.data_ptr<T>() : step_ptr<T>(cells, t - 1);
    const T* h_prev = step_ptr<T>(states, t);
    T* sp = step_ptr<T>(buffers[5], t);
    T* gp = step_ptr<T>(buffers[6], t);
    T* cp = step_ptr<T>(c_pre, t);
    for (int64_t b = 0; b < batch; ++b) {  // gates (eq. 6) and the cell (eq. 7)
      const T* arow = ap + b * four;
      const T* xrow = xp + b * four;
      T* srow = sp + b * 3 * hidden;
      T* grow = gp + b * hidden;
      T* crow = cp + b * hidden;
      const T* cprow = c_prev + b * hidden;
      for (int64_t j = 0; j < 3 * hidden; ++j) srow[j] = sigmoid(arow[j] * scale_h[j] + xrow[j] * scale_x[j] + shift[j]);
      for (int64_t k = 0, j = 3 * hidden; k < hidden; ++k, ++j)
        grow[k] = std::tanh(arow[j] * scale_h[j] + xrow[j] * scale_x[j] + shift[j]);
      for (int64_t k = 0; k < hidden; ++k) crow[k] = srow[k] * cprow[k] + srow[hidden + k] * grow[k];
    }
    T *mc = step_ptr<T>(moments[6], t), *ic = step_ptr<T>(moments[8], t);
    step_moments(static_cast<const T*>(cp), batch, hidden, m, n, training, optional_ptr<T>(run(4), t * hidden),
                 optional_ptr<T>(run(5), t * hidden), eps, mc, step_ptr<T>(moments[7], t), ic);
    for (int64_t k = 0; k < hidden; ++k) {
      scale_h[k] = ic[k] * gamma_c[k];
      shift[k] = beta_c[k] - mc[k] * scale_h[k];
    }
    T* tcp = step_ptr<T>(buffers[7], t);
    T* hp = step_ptr<T>(states, t + 1);
    T* cellp = step_ptr<T>(cells, t);
    for (int64_t b = 0; b < batch; ++b) {  // eq. 8; padded rows keep the previous state
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
    }
    if (low) states_mm[t + 1].copy_(states[t + 1]);
  }
}

// moments: mean and 1/σ of x, h and c.  grads: ∂L/∂γ_x, ∂L/∂γ_h, ∂L/∂b, ∂L/∂γ_c, ∂L/∂β_c per step.
// dh, dc: in, ∂L/∂h_{T−1} and ∂L/∂c_{T−1}; out, ∂L/∂h0 and ∂L/∂c0.
template <typename T>
void backward_impl(const Tensor& grad_out, const Tensor& weight_mm, const Tensors& params, const Tensor& mask,
                   const Tensor& counts, bool training, const Tensor& c0, const Tensor& wx, const Tensors& buffers,
                   const Tensors& moments, const Tensor& grad_wx, const Tensor& grad_a, const Tensors& grads,
                   const Tensor& dh, const Tensor& dc) {
  const Tensor &cells = buffers[2], &c_pre = buffers[3], &pre_h = buffers[4];
  const int64_t steps = c_pre.size(0), batch = c_pre.size(1), hidden = c_pre.size(2), four = 4 * hidden;
  const bool masked = mask.defined() && mask.numel() > 0;
  const bool low = grad_a.scalar_type() != grad_wx.scalar_type();
  const T *gamma_x = params[0].data_ptr<T>(), *gamma_h = params[1].data_ptr<T>(), *gamma_c = params[2].data_ptr<T>();
  Tensor scratch = torch::empty({batch, four}, grad_wx.options());  // ∂L/∂a of one step
  std::vector<T> dgate(batch * four), grad_y(batch * hidden), grad_c(batch * hidden), unused(four), dh_pass, dc_pass;
  if (masked) {
    dh_pass.resize(batch * hidden);
    dc_pass.resize(batch * hidden);
  }
  T* dhp = dh.data_ptr<T>();
  T* dcp = dc.data_ptr<T>();
  for (int64_t t = steps - 1; t >= 0; --t) {
    const T* m = optional_ptr<T>(mask, t * batch);
    const T n = masked ? counts.data_ptr<T>()[t] : static_cast<T>(batch);
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
    const T* sp = step_ptr<T>(buffers[5], t);
    const T* gp = step_ptr<T>(buffers[6], t);
    const T* tcp = step_ptr<T>(buffers[7], t);
    for (int64_t b = 0; b < batch; ++b) {  // h_t = o ⊙ tanh(y_c)
      const T* srow = sp + b * 3 * hidden;
      const T* trow = tcp + b * hidden;
      const T* dhrow = dhp + b * hidden;
      T* drow = dgate.data() + b * four;
      for (int64_t k = 0; k < hidden; ++k) {
        const T o = srow[2 * hidden + k];
        drow[2 * hidden + k] = dhrow[k] * trow[k] * o * (T(1) - o);
        grad_y[b * hidden + k] = dhrow[k] * o * (T(1) - trow[k] * trow[k]);
      }
    }
    norm_backward(grad_y.data(), step_ptr<T>(c_pre, t), batch, hidden, m, n, training, gamma_c,
                  step_ptr<T>(moments[4], t), step_ptr<T>(moments[5], t), grad_c.data(), step_ptr<T>(grads[3], t),
                  step_ptr<T>(grads[4], t));
    const T* c_prev = t == 0 ? c0.data_ptr<T>() : step_ptr<T>(cells, t - 1);
    for (int64_t b = 0; b < batch; ++b) {  // c_t = f ⊙ c_{t−1} + i ⊙ g, through σ and tanh
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
    }
    // gates = BN(W_x x_t; γ_x, 0) + BN(a_t; γ_h, 0) + b: ∂L/∂b = Σ_b ∂L/∂gates comes with the first
    norm_backward(static_cast<const T*>(dgate.data()), step_ptr<T>(wx, t), batch, four, m, n, training, gamma_x,
                  step_ptr<T>(moments[0], t), step_ptr<T>(moments[1], t), step_ptr<T>(grad_wx, t),
                  step_ptr<T>(grads[0], t), step_ptr<T>(grads[2], t));
    norm_backward(static_cast<const T*>(dgate.data()), step_ptr<T>(pre_h, t), batch, four, m, n, training, gamma_h,
                  step_ptr<T>(moments[2], t), step_ptr<T>(moments[3], t), scratch.data_ptr<T>(),
                  step_ptr<T>(grads[1], t), unused.data());
    Tensor ga = grad_a[t];
    ga.copy_(scratch);  // kept for the single ∂L/∂W_h product after the loop
    Tensor dh_next = torch::mm(low ? ga : scratch, weight_mm);
    if (t > 0) dh_next = dh_next.to(grad_wx.scalar_type()).add_(grad_out[t - 1]);
    dh.copy_(dh_next);
    if (m) {
      for (int64_t i = 0; i < batch * hidden; ++i) {
        dhp[i] += dh_pass[i];
        dcp[i] += dc_pass[i];
      }
    }
  }
}

void forward(const Tensor& wx, const Tensor& weight_t, const Tensors& params, const Tensor& mask, const Tensor& counts,
             const Tensors& running, bool training, double eps, const Tensor& c0, const Tensors& buffers,
             const Tensors& moments) {
  AT_DISPATCH_FLOATING_TYPES(wx.scalar_type(), "bn_lstm_forward", [&] {
    forward_impl<scalar_t>(wx, weight_t, params, mask, counts, running, training, eps, c0, buffers, moments);
  });
}

void backward(const Tensor& grad_out, const Tensor& weight_mm, const Tensors& params, const Tensor& mask,
              const Tensor& counts, bool training, const Tensor& c0, const Tensor& wx, const Tensors& buffers,
              const Tensors& moments, const Tensor& grad_wx, const Tensor& grad_a, const Tensors& grads,
              const Tensor& dh, const Tensor& dc) {
  AT_DISPATCH_FLOATING_TYPES(wx.scalar_type(), "bn_lstm_backward", [&] {
    backward_impl<scalar_t>(grad_out, weight_mm, params, mask, counts, training, c0, wx, buffers, moments, grad_wx,
                            grad_a, grads, dh, dc);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &forward, "BN-LSTM recurrence, forward over all steps (fills the given buffers)");
  module.def("backward", &backward, "BN-LSTM recurrence, back-propagation through time (fills the given buffers)");
}
