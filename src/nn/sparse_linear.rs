//! `Y = X Wᵀ + b` for a sparse constant input `X` (bag-of-words node features: Cora is
//! 2708 × 1433 at 1.3% density), PyTorch `Linear` layout `W (out, in)`.
//!
//! Forward: `Y[i,:] = Σ_{f ∈ nz(i)} X[i,f] W[:,f]ᵀ` — parallel over rows, cost nnz·out.
//! Backward (X is data, so only W and b): `∂L/∂W[:,f] = Σ_{i : f ∈ nz(i)} X[i,f] G[i,:]ᵀ`,
//! computed per feature column from the transposed (CSC) copy — parallel, no atomics;
//! `∂L/∂b = Σ_i G[i,:]`.
//! Dropout on `X` only touches its nonzeros, so [`SparseRows::dropout`] is exact (and it is
//! `nn::dropout`'s decision rule and mask kernel).
//!
//! Both products are the sparse × dense kernel [`crate::kernels::sparse::spmm`] (the CSC copy
//! read as rows, its values through their CSR positions); the bias gradient is
//! [`crate::kernels::col_sums`].

use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::init::Rng;
use crate::kernels::col_sums;
use crate::kernels::dropout::{apply_mask, dropout_mask};
use crate::kernels::sparse::{spmm, CsrView};
use crate::nn::dropout::KeepProb;
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};
use std::sync::Arc;

/// A CSR sparse matrix with f64 values, with its transpose kept for backward passes.
#[derive(Clone, Debug)]
pub struct SparseRows {
    rows: usize,
    cols: usize,
    indptr: Arc<Vec<usize>>,
    indices: Arc<Vec<usize>>,
    values: Arc<Vec<f64>>,
    /// CSC of the same matrix: (col ptr, row of each entry, position of the entry in CSR).
    csc: Arc<(Vec<usize>, Vec<usize>, Vec<usize>)>,
}

impl SparseRows {
    /// Rows given as lists of (column, value); columns must be `< cols`.
    pub fn new(cols: usize, rows: &[Vec<(usize, f64)>]) -> Result<Self> {
        let mut indptr = vec![0];
        let mut indices = Vec::new();
        let mut values = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            for &(c, v) in r {
                if c >= cols {
                    return Err(invalid!(
                        "row {i} has a feature in column {c}, but the width is {cols}"
                    ));
                }
                if !v.is_finite() {
                    return Err(invalid!("row {i} column {c} has non-finite value {v}"));
                }
                indices.push(c);
                values.push(v);
            }
            indptr.push(indices.len());
        }
        Ok(Self::from_csr(rows.len(), cols, indptr, indices, values))
    }

    /// Binary rows given as their nonzero columns.
    pub fn binary(cols: usize, rows: &[Vec<usize>]) -> Result<Self> {
        let r: Vec<Vec<(usize, f64)>> = rows
            .iter()
            .map(|r| r.iter().map(|&c| (c, 1.0)).collect())
            .collect();
        Self::new(cols, &r)
    }

    #[allow(clippy::needless_range_loop)]
    fn from_csr(
        rows: usize,
        cols: usize,
        indptr: Vec<usize>,
        indices: Vec<usize>,
        values: Vec<f64>,
    ) -> Self {
        let mut cptr = vec![0usize; cols + 1];
        for &c in &indices {
            cptr[c + 1] += 1;
        }
        for c in 0..cols {
            cptr[c + 1] += cptr[c];
        }
        let mut next = cptr.clone();
        let mut crow = vec![0usize; indices.len()];
        let mut cpos = vec![0usize; indices.len()];
        for i in 0..rows {
            for k in indptr[i]..indptr[i + 1] {
                let c = indices[k];
                crow[next[c]] = i;
                cpos[next[c]] = k;
                next[c] += 1;
            }
        }
        SparseRows {
            rows,
            cols,
            indptr: Arc::new(indptr),
            indices: Arc::new(indices),
            values: Arc::new(values),
            csc: Arc::new((cptr, crow, cpos)),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }
    pub fn row(&self, i: usize) -> (&[usize], &[f64]) {
        let r = self.indptr[i]..self.indptr[i + 1];
        (&self.indices[r.clone()], &self.values[r])
    }

    /// Row-normalized copy (each row sums to 1; empty rows stay empty), as GCN/GAT preprocess.
    pub fn row_normalized(&self) -> Self {
        let mut values = self.values.as_ref().clone();
        for i in 0..self.rows {
            let r = self.indptr[i]..self.indptr[i + 1];
            let s: f64 = values[r.clone()].iter().sum();
            if s != 0.0 {
                values[r].iter_mut().for_each(|v| *v /= s);
            }
        }
        SparseRows {
            values: Arc::new(values),
            ..self.clone()
        }
    }

    /// Inverted dropout on the nonzeros, `nn::dropout`'s rule and kernel
    /// ([`crate::kernels::dropout::dropout_mask`]): nonzero `k` (in CSR order) is dropped where
    /// the `k`-th draw gives `rng.bernoulli(1 − keep)` and kept scaled by `1/keep` otherwise. The
    /// zeros of `X` are unaffected by any mask, so this equals dropout on the dense matrix.
    pub fn dropout(&self, keep: KeepProb, rng: &mut Rng) -> Self {
        if keep.keep() == 1.0 {
            return self.clone();
        }
        let mask: Vec<f64> = dropout_mask(rng, self.nnz(), keep.drop_prob(), 1.0 / keep.keep());
        let values = apply_mask(&self.values, &mask);
        SparseRows {
            values: Arc::new(values),
            ..self.clone()
        }
    }

    /// The dense `(rows, cols)` matrix (tests, the PyTorch-like dense path).
    pub fn to_dense<T: Element>(&self) -> Tensor<T> {
        let mut d = vec![T::zero(); self.rows * self.cols];
        for i in 0..self.rows {
            let (c, v) = self.row(i);
            for (&c, &v) in c.iter().zip(v) {
                d[i * self.cols + c] += T::c(v);
            }
        }
        Tensor::from_parts(vec![self.rows, self.cols], d)
    }
}

struct SparseLinear {
    x: SparseRows,
    has_bias: bool,
}

impl<T: Element> Op<T> for SparseLinear {
    fn name(&self) -> &'static str {
        "sparse_linear"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let g = ctx.grad();
        let w = ctx.inputs[0];
        let (out, inp) = (w.dim(0), w.dim(1));
        let mut res = Vec::new();
        if ctx.needs_grad[0] {
            let (cptr, crow, cpos) = self.x.csc.as_ref();
            // (in, out) = Xᵀ G: column f of W as a contiguous row, then transposed.
            let xt = CsrView {
                ptr: cptr,
                cols: crow,
                vals: &self.x.values,
                pos: Some(cpos),
            };
            let mut dwt = vec![T::zero(); inp * out];
            spmm(&mut dwt, out, xt, g.data(), None);
            res.push(Some(Tensor::new(&[inp, out], dwt)?.t()?));
        } else {
            res.push(None);
        }
        if self.has_bias {
            res.push(if ctx.needs_grad[1] {
                Some(Tensor::new(&[out], col_sums(g.data(), out))?)
            } else {
                None
            });
        }
        Ok(res)
    }
}

/// `Y (N, out) = X Wᵀ + b` for sparse `X (N, in)`, `W (out, in)`, `b (out)`.
pub fn sparse_linear<T: Element>(
    tape: &mut Tape<T>,
    x: &SparseRows,
    w: Var,
    b: Option<Var>,
) -> Result<Var> {
    let ws = tape.shape(w).to_vec();
    if ws.len() != 2 || ws[1] != x.cols {
        return Err(shape_err!(
            "sparse_linear",
            "features ({}, {}) do not fit weight {:?} (out, in)",
            x.rows,
            x.cols,
            ws
        ));
    }
    let out = ws[0];
    if let Some(b) = b {
        if tape.shape(b) != [out] {
            return Err(shape_err!(
                "sparse_linear",
                "bias {:?} does not fit weight {:?}",
                tape.shape(b),
                ws
            ));
        }
    }
    // Wᵀ (in, out) so each feature contributes one contiguous row.
    let wt = tape.value(w).t()?;
    let bias: Option<Vec<T>> = b.map(|b| tape.value(b).data().to_vec());
    let mut y = vec![T::zero(); x.rows * out];
    let xv = CsrView {
        ptr: &x.indptr,
        cols: &x.indices,
        vals: &x.values,
        pos: None,
    };
    spmm(&mut y, out, xv, wt.data(), bias.as_deref());
    let y = Tensor::new(&[x.rows, out], y)?;
    let inputs: Vec<Var> = std::iter::once(w).chain(b).collect();
    Ok(tape.record1(
        SparseLinear {
            x: x.clone(),
            has_bias: b.is_some(),
        },
        &inputs,
        y,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::ParamStore;
    use crate::gradcheck::{check_gradients, randn, GradCheckOptions};

    /// The feature dropout makes `nn::dropout`'s decisions, one draw per nonzero in CSR order:
    /// dropped where `rng.bernoulli(p)` (PyTorch's p), kept ×1/(1 − p).
    #[test]
    fn dropout_is_the_one_dropout_rule_on_the_nonzeros() {
        let rows: Vec<Vec<(usize, f64)>> = (0..50)
            .map(|i| {
                (0..7)
                    .filter(|c| (i + c) % 3 != 0)
                    .map(|c| (c, 0.5 + c as f64))
                    .collect()
            })
            .collect();
        let x = SparseRows::new(7, &rows).unwrap();
        for p in [0.5, 0.6, 0.25] {
            let d = x.dropout(
                KeepProb::from_torch_drop_prob(p).unwrap(),
                &mut Rng::new(11),
            );
            let mut r = Rng::new(11);
            let want: Vec<f64> = x
                .values
                .iter()
                .map(|&v| {
                    if r.bernoulli(p) {
                        0.0
                    } else {
                        v * (1.0 / (1.0 - p))
                    }
                })
                .collect();
            assert_eq!(d.values.as_ref(), &want, "p = {p}");
            assert!(want.contains(&0.0) && want.iter().any(|&v| v != 0.0));
        }
        let same = x.dropout(KeepProb::new(1.0).unwrap(), &mut Rng::new(1));
        assert_eq!(same.values, x.values);
    }

    #[test]
    fn sparse_linear_matches_dense_and_gradcheck() {
        let mut rng = Rng::new(3);
        let rows: Vec<Vec<(usize, f64)>> = (0..7)
            .map(|i| {
                (0..9)
                    .filter(|&c| (i * 7 + c * 3) % 4 == 0)
                    .map(|c| (c, 0.5 + c as f64 * 0.1))
                    .collect()
            })
            .collect();
        let x = SparseRows::new(9, &rows).unwrap();
        let mut store = ParamStore::<f64>::new();
        let w = store.add("weight", randn(&[4, 9], 1.0, &mut rng)).unwrap();
        let b = store.add("bias", randn(&[4], 1.0, &mut rng)).unwrap();
        // Against the dense product through the primitive ops.
        let mut tape = Tape::<f64>::new();
        let (wv, bv) = (tape.param(&store, w), tape.param(&store, b));
        let ys = sparse_linear(&mut tape, &x, wv, Some(bv)).unwrap();
        let xd = tape.constant(x.to_dense());
        let yd = crate::ops::linear(&mut tape, xd, wv, Some(bv)).unwrap();
        assert!(tape.value(ys).max_abs_diff(tape.value(yd)).unwrap() < 1e-12);
        let rep = check_gradients(&store, &[], &GradCheckOptions::default(), |t, p, _| {
            let (wv, bv) = (t.param(p, w), t.param(p, b));
            sparse_linear(t, &x, wv, Some(bv))
        })
        .unwrap();
        assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
        let bad = SparseRows::new(3, &[vec![(3, 1.0)]]).unwrap_err();
        assert!(bad.to_string().contains("column 3"), "{bad}");
    }
}
