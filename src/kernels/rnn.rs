//! Raw loops of the recurrent ops: layout changes between batch-major `(B, T, F)` and the
//! time-major `(T, B, F)` the sequence kernels run in, the squared-error loss and its gradient,
//! and the pointwise gate updates of the LSTM and GRU cells (forward and backward).

use crate::kernels::elementwise::{sigmoid_in_place, tanh_in_place};
use crate::tensor::Element;

/// `(A, B, F)` → `(B, A, F)` row-major.
pub fn swap01<T: Copy>(x: &[T], a: usize, b: usize, f: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(a * b * f);
    for j in 0..b {
        for i in 0..a {
            out.extend_from_slice(&x[(i * b + j) * f..(i * b + j + 1) * f]);
        }
    }
    out
}

/// `(A, B, F)` → `(B, A, F)` row-major into a reused buffer.
pub fn swap01_into<T: Copy>(x: &[T], a: usize, b: usize, f: usize, out: &mut Vec<T>) {
    out.clear();
    out.reserve(a * b * f);
    for j in 0..b {
        for i in 0..a {
            out.extend_from_slice(&x[(i * b + j) * f..(i * b + j + 1) * f]);
        }
    }
}

/// `L = Σ (y − z)²` and `∂L/∂y = 2(y − z)` with `y (T, B, O)` time-major and `z (B, T, O)`
/// batch-major: the transpose of `z` is fused into the loss pass.
pub fn mse_grad_bm_into<T: Element>(
    y_tm: &[T],
    z: &[T],
    (b, t, o): (usize, usize, usize),
    gy: &mut Vec<T>,
) -> f64 {
    gy.clear();
    gy.resize(t * b * o, T::zero());
    let two = T::c(2.0);
    let mut loss = 0.0f64;
    for s in 0..t {
        for j in 0..b {
            let r0 = (s * b + j) * o;
            let z0 = (j * t + s) * o;
            for ((g, &yv), &zv) in gy[r0..r0 + o]
                .iter_mut()
                .zip(&y_tm[r0..r0 + o])
                .zip(&z[z0..z0 + o])
            {
                let r = yv - zv;
                loss += r.as_f64() * r.as_f64();
                *g = two * r;
            }
        }
    }
    loss
}

/// `L = Σ (y − z)²` (accumulated in f64) and `∂L/∂y = 2(y − z)`.
pub fn mse_grad<T: Element>(y: &[T], z: &[T]) -> (f64, Vec<T>) {
    let mut loss = 0.0f64;
    let two = T::c(2.0);
    let gy = y
        .iter()
        .zip(z)
        .map(|(&a, &b)| {
            let r = a - b;
            loss += r.as_f64() * r.as_f64();
            two * r
        })
        .collect();
    (loss, gy)
}

/// LSTM step, pointwise part, for rows of `(B, 4H)` gate pre-activations (PyTorch's order
/// i, f, g, o): activates the gates in place (σ, σ, tanh, σ through the vectorized kernels), then
/// `c = f ⊙ c_prev + i ⊙ g`, `tc = tanh c`, `h = o ⊙ tc`, all `(B, H)`.
pub fn lstm_cell_forward<T: Element>(
    hidden: usize,
    gates: &mut [T],
    c_prev: &[T],
    c: &mut [T],
    tc: &mut [T],
    h: &mut [T],
) {
    let hd = hidden;
    for (b, row) in gates.chunks_exact_mut(4 * hd).enumerate() {
        let (ifg, o) = row.split_at_mut(3 * hd);
        let (if_, g) = ifg.split_at_mut(2 * hd);
        sigmoid_in_place(if_);
        tanh_in_place(g);
        sigmoid_in_place(o);
        let r = b * hd..(b + 1) * hd;
        let (i, f) = if_.split_at(hd);
        for ((((cv, &cp), &iv), &fv), &gv) in c[r.clone()]
            .iter_mut()
            .zip(&c_prev[r.clone()])
            .zip(i)
            .zip(f)
            .zip(&*g)
        {
            *cv = fv * cp + iv * gv;
        }
        tc[r.clone()].copy_from_slice(&c[r.clone()]);
        tanh_in_place(&mut tc[r.clone()]);
        for ((hv, &ov), &kv) in h[r.clone()].iter_mut().zip(&*o).zip(&tc[r]) {
            *hv = ov * kv;
        }
    }
}

/// LSTM step backward, pointwise part. With `k = tanh c_t` and the gates of the step,
///
/// ```text
/// ∂c    = dc + dh ⊙ o ⊙ (1 − k²)          (dc: ∇_{c_t}L from step t+1)
/// da_i  = ∂c ⊙ g ⊙ i(1 − i)     da_f = ∂c ⊙ c_{t−1} ⊙ f(1 − f)
/// da_g  = ∂c ⊙ i ⊙ (1 − g²)     da_o = dh ⊙ k ⊙ o(1 − o)
/// dc   ← ∂c ⊙ f                  (∇_{c_{t−1}}L)
/// ```
///
/// `gates (B, 4H)` activated, `c_prev`, `tc`, `dh`, `dc` `(B, H)`; writes `da (B, 4H)`.
pub fn lstm_cell_backward<T: Element>(
    hidden: usize,
    gates: &[T],
    c_prev: &[T],
    tc: &[T],
    dh: &[T],
    dc: &mut [T],
    da: &mut [T],
) {
    let hd = hidden;
    let one = T::one();
    for (b, (gr, dr)) in gates
        .chunks_exact(4 * hd)
        .zip(da.chunks_exact_mut(4 * hd))
        .enumerate()
    {
        let base = b * hd;
        for j in 0..hd {
            let (i, f, g, o) = (gr[j], gr[hd + j], gr[2 * hd + j], gr[3 * hd + j]);
            let k = tc[base + j];
            let dhv = dh[base + j];
            let dcc = dc[base + j] + dhv * o * (one - k * k);
            dr[j] = dcc * g * i * (one - i);
            dr[hd + j] = dcc * c_prev[base + j] * f * (one - f);
            dr[2 * hd + j] = dcc * i * (one - g * g);
            dr[3 * hd + j] = dhv * k * o * (one - o);
            dc[base + j] = dcc * f;
        }
    }
}

/// GRU step, pointwise part (PyTorch's order r, z, n). `gi (B, 3H)` holds `x W_ihᵀ + b_ih` and
/// is overwritten with the activated gates, `gh (B, 3H)` holds `h_prev W_hhᵀ + b_hh`:
///
/// ```text
/// r = σ(gi_r + gh_r)   z = σ(gi_z + gh_z)   n = tanh(gi_n + r ⊙ gh_n)
/// h = (1 − z) ⊙ n + z ⊙ h_prev
/// ```
///
/// `ghn (B, H)` receives `gh_n` (what r multiplies, kept for the backward).
pub fn gru_cell_forward<T: Element>(
    hidden: usize,
    gi: &mut [T],
    gh: &[T],
    h_prev: &[T],
    h: &mut [T],
    ghn: &mut [T],
) {
    let hd = hidden;
    for (b, (row, hrow)) in gi
        .chunks_exact_mut(3 * hd)
        .zip(gh.chunks_exact(3 * hd))
        .enumerate()
    {
        let (rz, n) = row.split_at_mut(2 * hd);
        for (a, &g) in rz.iter_mut().zip(&hrow[..2 * hd]) {
            *a += g;
        }
        sigmoid_in_place(rz);
        let base = b * hd;
        for j in 0..hd {
            let hn = hrow[2 * hd + j];
            ghn[base + j] = hn;
            n[j] += rz[j] * hn;
        }
        tanh_in_place(n);
        for j in 0..hd {
            let z = rz[hd + j];
            h[base + j] = n[j] + z * (h_prev[base + j] - n[j]);
        }
    }
}

/// GRU step backward, pointwise part:
///
/// ```text
/// da_n = dh ⊙ (1 − z) ⊙ (1 − n²)      da_z = dh ⊙ (h_prev − n) ⊙ z(1 − z)
/// da_r = da_n ⊙ gh_n ⊙ r(1 − r)
/// da   = [da_r, da_z, da_n]          (∇ of x W_ihᵀ + b_ih)
/// da_h = [da_r, da_z, da_n ⊙ r]      (∇ of h_prev W_hhᵀ + b_hh)
/// dprev += dh ⊙ z                    (the direct path into ∇_{h_prev}L)
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gru_cell_backward<T: Element>(
    hidden: usize,
    gates: &[T],
    ghn: &[T],
    h_prev: &[T],
    dh: &[T],
    da: &mut [T],
    da_h: &mut [T],
    dprev: Option<&mut [T]>,
) {
    let hd = hidden;
    let one = T::one();
    for (b, ((gr, dr), dhr)) in gates
        .chunks_exact(3 * hd)
        .zip(da.chunks_exact_mut(3 * hd))
        .zip(da_h.chunks_exact_mut(3 * hd))
        .enumerate()
    {
        let base = b * hd;
        for j in 0..hd {
            let (r, z, n) = (gr[j], gr[hd + j], gr[2 * hd + j]);
            let dhv = dh[base + j];
            let dan = dhv * (one - z) * (one - n * n);
            let daz = dhv * (h_prev[base + j] - n) * z * (one - z);
            let dar = dan * ghn[base + j] * r * (one - r);
            dr[j] = dar;
            dr[hd + j] = daz;
            dr[2 * hd + j] = dan;
            dhr[j] = dar;
            dhr[hd + j] = daz;
            dhr[2 * hd + j] = dan * r;
        }
    }
    if let Some(dp) = dprev {
        for (b, gr) in gates.chunks_exact(3 * hd).enumerate() {
            let base = b * hd;
            for j in 0..hd {
                dp[base + j] += dh[base + j] * gr[hd + j];
            }
        }
    }
}
