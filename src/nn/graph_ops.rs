//! Fused edge-level ops of message passing, forward and backward side by side.
//!
//! Messages are never materialized per edge: a message function produces a node-level *table*
//! `S (M, W)` (for `f(h_j) = W h_j` the table is `H Wᵀ`, for per-edge-type messages it has one
//! row per (node, type)) and edge `e` reads row `rows[e]` of it ([`EdgeIndex`]). Edges are CSR by
//! destination, so every forward runs in parallel over destination nodes writing only their own
//! rows; every backward that sums over the edges *leaving* a row runs in parallel over rows using
//! the by-row grouping. Nothing uses atomics. `H` heads split the width `W = H·d` into blocks.
//!
//! - weighted sum: `out[i,h] = Σ_{e∈in(i)} α[e,h] S[r_e,h]`;
//!   `∂S[r,h] = Σ_{e: r_e=r} α[e,h] G[dst_e,h]`, `∂α[e,h] = ⟨G[dst_e,h], S[r_e,h]⟩`.
//!   Sum, mean (`α = 1/|N(i)|`) and fixed per-edge weights are this op with a constant `α`.
//! - max: `out[i,c] = max_{e∈in(i)} S[r_e,c]` (0 for a node without in-edges); the gradient goes
//!   to the arg-max edge (first one on ties), as in PyTorch's `scatter_reduce(amax)` subgradient.
//! - edge softmax over `e ∈ in(i)` per head: `α = softmax(s)`, `∂s = α ⊙ (∂α − Σ_{e'∈in(i)} α ∂α)`.
//! - edge dot: `s[e,h] = c·⟨Q[dst_e,h], K[r_e,h]⟩`; `∂Q[i,h] = c Σ_{e∈in(i)} ∂s[e,h] K[r_e,h]`,
//!   `∂K[r,h] = c Σ_{e: r_e=r} ∂s[e,h] Q[dst_e,h]`.
//! - edge add: `s[e,h] = a[src_e,h] + b[dst_e,h]` (GAT's score before the LeakyReLU);
//!   `∂a[j] = Σ_{e: src_e=j} ∂s[e]`, `∂b[i] = Σ_{e∈in(i)} ∂s[e]`.
//! - head scores (node level, GAT's two terms of that score): `s[n,h] = ⟨Z[n,h], a[h]⟩`;
//!   `∂Z[n,h] = ∂s[n,h] a[h]`, `∂a[h] = Σ_n ∂s[n,h] Z[n,h]` — PyG's `(x * att).sum(-1)` fused.

//!
//! The loops themselves are kernels of [`crate::kernels::sparse`]: segment gathers (weighted
//! per head, or plain sums), per-edge head dots, segment maxima, per-edge row sums and the
//! segment softmax. This file keeps the math and the bookkeeping of which rows feed which.

use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::graph::{EdgeIndex, Graph};
use crate::kernels::reduce::{row_head_dots, row_head_dots_backward};
use crate::kernels::sparse::{
    edge_add_rows, edge_dots, edge_softmax as kernel_edge_softmax, edge_softmax_backward,
    segment_gather, segment_max, segment_max_backward, EdgeWeights, Segments, NO_EDGE,
};
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};

fn check_index(op: &str, graph: &Graph, index: &EdgeIndex, table: &[usize]) -> Result<()> {
    if index.rows().len() != graph.num_edges() {
        return Err(shape_err!(
            op,
            "edge index has {} rows for a graph with {} edges",
            index.rows().len(),
            graph.num_edges()
        ));
    }
    if table.len() != 2 || table[0] != index.num_rows() {
        return Err(shape_err!(
            op,
            "table {:?} must be 2-D with {} rows",
            table,
            index.num_rows()
        ));
    }
    Ok(())
}

fn check_edge_heads(op: &str, graph: &Graph, s: &[usize], heads: usize) -> Result<()> {
    if s != [graph.num_edges(), heads] {
        return Err(shape_err!(
            op,
            "per-edge values {:?} must be (edges {}, heads {heads})",
            s,
            graph.num_edges()
        ));
    }
    Ok(())
}

fn check_width(op: &str, width: usize, heads: usize) -> Result<()> {
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(shape_err!(
            op,
            "width {width} is not divisible by {heads} heads"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// weighted sum

struct WeightedAggregate {
    graph: Graph,
    index: EdgeIndex,
    heads: usize,
}

impl<T: Element> Op<T> for WeightedAggregate {
    fn name(&self) -> &'static str {
        "weighted_aggregate"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (s, alpha) = (ctx.inputs[0], ctx.inputs[1]);
        let g = ctx.grad();
        let (m, w) = (s.dim(0), s.dim(1));
        let h = self.heads;
        let dst = self.graph.dst();
        let rows = self.index.rows();
        let ds = if ctx.needs_grad[0] {
            // ∂S[r,h] = Σ_{e: r_e=r} α[e,h] G[dst_e,h]: gather G by the edges reading row r.
            let (ptr, edges) = self.index.groups();
            let mut ds = vec![T::zero(); m * w];
            let wts = EdgeWeights {
                alpha: alpha.data(),
                heads: h,
                scale: T::one(),
            };
            let seg = Segments::grouped(ptr, edges);
            segment_gather(&mut ds, w, seg, g.data(), Some(dst), Some(wts));
            Some(Tensor::new(s.shape(), ds)?)
        } else {
            None
        };
        let da = if ctx.needs_grad[1] {
            // ∂α[e,h] = ⟨G[dst_e,h], S[r_e,h]⟩.
            let mut da = vec![T::zero(); rows.len() * h];
            edge_dots(&mut da, g.data(), dst, s.data(), rows, w, h, T::one());
            Some(Tensor::new(alpha.shape(), da)?)
        } else {
            None
        };
        Ok(vec![ds, da])
    }
}

/// `out (N, W)`: `out[i,h] = Σ_{e∈in(i)} α[e,h] · S[rows_e, h]` for `S (M, W)`, `α (E, H)`.
pub fn weighted_aggregate<T: Element>(
    tape: &mut Tape<T>,
    graph: &Graph,
    index: &EdgeIndex,
    table: Var,
    alpha: Var,
) -> Result<Var> {
    let op = "weighted_aggregate";
    check_index(op, graph, index, tape.shape(table))?;
    let heads = tape.shape(alpha).get(1).copied().unwrap_or(0);
    check_edge_heads(op, graph, tape.shape(alpha), heads)?;
    let w = tape.shape(table)[1];
    check_width(op, w, heads)?;
    let (s, a) = (tape.value(table), tape.value(alpha));
    let rows = index.rows();
    let n = graph.num_nodes();
    let mut out = vec![T::zero(); n * w];
    let wts = EdgeWeights {
        alpha: a.data(),
        heads,
        scale: T::one(),
    };
    let seg = Segments::csr(graph.indptr());
    segment_gather(&mut out, w, seg, s.data(), Some(rows), Some(wts));
    let out = Tensor::new(&[n, w], out)?;
    Ok(tape.record1(
        WeightedAggregate {
            graph: graph.clone(),
            index: index.clone(),
            heads,
        },
        &[table, alpha],
        out,
    ))
}

// ---------------------------------------------------------------------------------------------
// max

struct MaxAggregate {
    graph: Graph,
    index: EdgeIndex,
    /// (N, W) the edge that won each output entry, [`NO_EDGE`] where there is none.
    argmax: Vec<u32>,
}

impl<T: Element> Op<T> for MaxAggregate {
    fn name(&self) -> &'static str {
        "max_aggregate"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let s = ctx.inputs[0];
        let g = ctx.grad();
        let (m, w) = (s.dim(0), s.dim(1));
        let (ptr, edges) = self.index.groups();
        let dst = self.graph.dst();
        let mut ds = vec![T::zero(); m * w];
        let seg = Segments::grouped(ptr, edges);
        segment_max_backward(&mut ds, w, seg, dst, &self.argmax, g.data());
        Ok(vec![Some(Tensor::new(s.shape(), ds)?)])
    }
}

/// `out (N, W)`: elementwise `max_{e∈in(i)} S[rows_e]`; 0 for nodes without incoming edges.
pub fn max_aggregate<T: Element>(
    tape: &mut Tape<T>,
    graph: &Graph,
    index: &EdgeIndex,
    table: Var,
) -> Result<Var> {
    check_index("max_aggregate", graph, index, tape.shape(table))?;
    // Arg-max edge ids are kept as u32 (half the memory of the (N, W) table).
    if graph.num_edges() >= NO_EDGE as usize {
        return Err(invalid!(
            "max_aggregate supports fewer than {NO_EDGE} edges, the graph has {}",
            graph.num_edges()
        ));
    }
    let w = tape.shape(table)[1];
    let s = tape.value(table);
    let n = graph.num_nodes();
    let mut out = vec![T::zero(); n * w];
    let mut arg = vec![NO_EDGE; n * w];
    let seg = Segments::csr(graph.indptr());
    segment_max(&mut out, &mut arg, w, seg, s.data(), index.rows());
    let out = Tensor::new(&[n, w], out)?;
    Ok(tape.record1(
        MaxAggregate {
            graph: graph.clone(),
            index: index.clone(),
            argmax: arg,
        },
        &[table],
        out,
    ))
}

// ---------------------------------------------------------------------------------------------
// edge softmax

struct EdgeSoftmax {
    graph: Graph,
    heads: usize,
}

impl<T: Element> Op<T> for EdgeSoftmax {
    fn name(&self) -> &'static str {
        "edge_softmax"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let a = ctx.outputs[0];
        let g = ctx.grad();
        let mut ds = vec![T::zero(); a.numel()];
        edge_softmax_backward(a.data(), g.data(), self.graph.indptr(), self.heads, &mut ds);
        Ok(vec![Some(Tensor::new(a.shape(), ds)?)])
    }
}

/// `α (E, H)`: softmax of `scores (E, H)` over the incoming edges of each destination, per head
/// (max-subtracted; an edge scored `−∞` gets weight 0 — a mask).
pub fn edge_softmax<T: Element>(tape: &mut Tape<T>, graph: &Graph, scores: Var) -> Result<Var> {
    let heads = tape.shape(scores).get(1).copied().unwrap_or(0);
    check_edge_heads("edge_softmax", graph, tape.shape(scores), heads)?;
    let s = tape.value(scores);
    let mut a = s.data().to_vec();
    kernel_edge_softmax(&mut a, graph.indptr(), heads);
    let out = Tensor::new(s.shape(), a)?;
    Ok(tape.record1(
        EdgeSoftmax {
            graph: graph.clone(),
            heads,
        },
        &[scores],
        out,
    ))
}

// ---------------------------------------------------------------------------------------------
// edge dot

struct EdgeDot<T> {
    graph: Graph,
    index: EdgeIndex,
    heads: usize,
    scale: T,
}

impl<T: Element> Op<T> for EdgeDot<T> {
    fn name(&self) -> &'static str {
        "edge_dot"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (q, k) = (ctx.inputs[0], ctx.inputs[1]);
        let g = ctx.grad();
        let (h, w) = (self.heads, q.dim(1));
        let rows = self.index.rows();
        let dst = self.graph.dst();
        // Both gradients gather K or Q rows weighted by c·∂s[e,h].
        let wts = EdgeWeights {
            alpha: g.data(),
            heads: h,
            scale: self.scale,
        };
        let dq = if ctx.needs_grad[0] {
            let mut dq = vec![T::zero(); q.numel()];
            let seg = Segments::csr(self.graph.indptr());
            segment_gather(&mut dq, w, seg, k.data(), Some(rows), Some(wts));
            Some(Tensor::new(q.shape(), dq)?)
        } else {
            None
        };
        let dk = if ctx.needs_grad[1] {
            let (ptr, edges) = self.index.groups();
            let mut dk = vec![T::zero(); k.numel()];
            let seg = Segments::grouped(ptr, edges);
            segment_gather(&mut dk, w, seg, q.data(), Some(dst), Some(wts));
            Some(Tensor::new(k.shape(), dk)?)
        } else {
            None
        };
        Ok(vec![dq, dk])
    }
}

/// `s (E, H)`: `s[e,h] = scale · ⟨Q[dst_e, h], K[rows_e, h]⟩` for `Q (N, W)`, `K (M, W)`.
pub fn edge_dot<T: Element>(
    tape: &mut Tape<T>,
    graph: &Graph,
    index: &EdgeIndex,
    q: Var,
    k: Var,
    heads: usize,
    scale: f64,
) -> Result<Var> {
    let op = "edge_dot";
    check_index(op, graph, index, tape.shape(k))?;
    let (qs, ks) = (tape.shape(q), tape.shape(k));
    if qs.len() != 2 || qs[0] != graph.num_nodes() || qs[1] != ks[1] {
        return Err(shape_err!(
            op,
            "queries {:?} must be ({} nodes, {}) to match keys {:?}",
            qs,
            graph.num_nodes(),
            ks[1],
            ks
        ));
    }
    let w = qs[1];
    check_width(op, w, heads)?;
    let c = T::c(scale);
    let (qv, kv) = (tape.value(q), tape.value(k));
    let mut s = vec![T::zero(); graph.num_edges() * heads];
    edge_dots(
        &mut s,
        qv.data(),
        graph.dst(),
        kv.data(),
        index.rows(),
        w,
        heads,
        c,
    );
    let out = Tensor::new(&[graph.num_edges(), heads], s)?;
    Ok(tape.record1(
        EdgeDot {
            graph: graph.clone(),
            index: index.clone(),
            heads,
            scale: c,
        },
        &[q, k],
        out,
    ))
}

// ---------------------------------------------------------------------------------------------
// head scores

struct HeadScores {
    heads: usize,
}

impl<T: Element> Op<T> for HeadScores {
    fn name(&self) -> &'static str {
        "head_scores"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (z, a) = (ctx.inputs[0], ctx.inputs[1]);
        let g = ctx.grad();
        let mut dz = ctx.needs_grad[0].then(|| vec![T::zero(); z.numel()]);
        let mut da = ctx.needs_grad[1].then(|| vec![T::zero(); a.numel()]);
        row_head_dots_backward(
            z.data(),
            a.data(),
            g.data(),
            self.heads,
            dz.as_deref_mut(),
            da.as_deref_mut(),
        );
        Ok(vec![
            dz.map(|v| Tensor::new(z.shape(), v)).transpose()?,
            da.map(|v| Tensor::new(a.shape(), v)).transpose()?,
        ])
    }
}

/// `s (N, H)`: `s[n,h] = Σ_f z[n,h,f] · a[h,f]` for `z (N, H, F)` and `a (H, F)` — the node
/// terms of GAT's attention score in one op (the reference is `sum(mul(z, a), 2)`).
pub fn head_scores<T: Element>(tape: &mut Tape<T>, z: Var, a: Var) -> Result<Var> {
    let (sz, sa) = (tape.shape(z).to_vec(), tape.shape(a).to_vec());
    if sz.len() != 3 || sa.len() != 2 || sz[1..] != sa[..] {
        return Err(shape_err!(
            "head_scores",
            "features {:?} must be (N, heads, F) and the attention vector {:?} (heads, F)",
            sz,
            sa
        ));
    }
    let (n, h) = (sz[0], sz[1]);
    let mut s = vec![T::zero(); n * h];
    row_head_dots(tape.value(z).data(), tape.value(a).data(), h, &mut s);
    let out = Tensor::new(&[n, h], s)?;
    Ok(tape.record1(HeadScores { heads: h }, &[z, a], out))
}

// ---------------------------------------------------------------------------------------------
// edge add

struct EdgeAdd {
    graph: Graph,
}

impl<T: Element> Op<T> for EdgeAdd {
    fn name(&self) -> &'static str {
        "edge_add"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let g = ctx.grad();
        let h = g.dim(1);
        let n = self.graph.num_nodes();
        // Both are sums of ∂s rows: over the edges leaving j, and over those entering i.
        let da = if ctx.needs_grad[0] {
            let (ptr, edges) = self.graph.source_index().groups();
            let mut da = vec![T::zero(); n * h];
            segment_gather(
                &mut da,
                h,
                Segments::grouped(ptr, edges),
                g.data(),
                None,
                None,
            );
            Some(Tensor::new(&[n, h], da)?)
        } else {
            None
        };
        let db = if ctx.needs_grad[1] {
            let mut db = vec![T::zero(); n * h];
            let seg = Segments::csr(self.graph.indptr());
            segment_gather(&mut db, h, seg, g.data(), None, None);
            Some(Tensor::new(&[n, h], db)?)
        } else {
            None
        };
        Ok(vec![da, db])
    }
}

/// `s (E, H)`: `s[e] = a[src_e] + b[dst_e]` for `a, b (N, H)`.
pub fn edge_add<T: Element>(tape: &mut Tape<T>, graph: &Graph, a: Var, b: Var) -> Result<Var> {
    let (sa, sb) = (tape.shape(a).to_vec(), tape.shape(b).to_vec());
    if sa.len() != 2 || sa != sb || sa[0] != graph.num_nodes() {
        return Err(shape_err!(
            "edge_add",
            "source {:?} and destination {:?} terms must both be ({} nodes, heads)",
            sa,
            sb,
            graph.num_nodes()
        ));
    }
    let h = sa[1];
    let (av, bv) = (tape.value(a), tape.value(b));
    let mut s = vec![T::zero(); graph.num_edges() * h];
    edge_add_rows(&mut s, av.data(), graph.src(), bv.data(), graph.dst(), h);
    let out = Tensor::new(&[graph.num_edges(), h], s)?;
    Ok(tape.record1(
        EdgeAdd {
            graph: graph.clone(),
        },
        &[a, b],
        out,
    ))
}

/// Constant per-edge weights `(E, 1)` for sum (`1`) and mean (`1/|N(i)|`) aggregation.
pub fn uniform_weights<T: Element>(graph: &Graph, mean: bool) -> Tensor<T> {
    let deg = graph.in_degrees();
    Tensor::from_fn(&[graph.num_edges(), 1], |e| {
        if mean {
            T::c(1.0 / deg[graph.dst()[e]] as f64)
        } else {
            T::one()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_inputs, randn};
    use crate::init::Rng;

    fn test_graph() -> Graph {
        // Multi-edges, a node without in-edges (4), a self loop and a typed pair.
        Graph::from_typed_edges(
            5,
            &[
                (0, 1, 0),
                (2, 1, 1),
                (3, 1, 0),
                (1, 0, 1),
                (1, 2, 0),
                (2, 2, 0),
                (4, 3, 1),
                (0, 3, 0),
                (0, 3, 1),
            ],
            2,
        )
        .unwrap()
    }

    #[test]
    fn weighted_aggregate_matches_reference_and_gradcheck() {
        let g = test_graph();
        let mut rng = Rng::new(1);
        for (index, heads) in [(g.source_index().clone(), 1), (g.typed_source_index(), 2)] {
            let s = randn(&[index.num_rows(), 4], 1.0, &mut rng);
            let a = randn(&[g.num_edges(), heads], 1.0, &mut rng);
            let mut tape = Tape::<f64>::new();
            let (sv, av) = (tape.constant(s.clone()), tape.constant(a.clone()));
            let out = weighted_aggregate(&mut tape, &g, &index, sv, av).unwrap();
            // Reference: per edge message, gathered and scattered with the primitive ops.
            let mut want = vec![0.0; 5 * 4];
            for e in 0..g.num_edges() {
                for c in 0..4 {
                    want[g.dst()[e] * 4 + c] +=
                        a.data()[e * heads + c / (4 / heads)] * s.data()[index.rows()[e] * 4 + c];
                }
            }
            assert!(tape
                .value(out)
                .data()
                .iter()
                .zip(&want)
                .all(|(x, y)| (x - y).abs() < 1e-12));
            let rep = check_inputs(&[s, a], |t, v| {
                weighted_aggregate(t, &g, &index, v[0], v[1])
            })
            .unwrap();
            assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
        }
    }

    #[test]
    fn max_aggregate_values_and_gradcheck() {
        let g = test_graph();
        let mut rng = Rng::new(2);
        let s = randn(&[5, 3], 1.0, &mut rng);
        let mut tape = Tape::<f64>::new();
        let sv = tape.constant(s.clone());
        let out = max_aggregate(&mut tape, &g, g.source_index(), sv).unwrap();
        let o = tape.value(out).data().to_vec();
        for c in 0..3 {
            let m = [0, 2, 3]
                .iter()
                .map(|&j| s.data()[j * 3 + c])
                .fold(f64::MIN, f64::max);
            assert_eq!(o[3 + c], m);
            assert_eq!(o[4 * 3 + c], 0.0);
        }
        let rep = check_inputs(&[s], |t, v| max_aggregate(t, &g, g.source_index(), v[0])).unwrap();
        assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
    }

    #[test]
    fn edge_softmax_dot_add_gradcheck() {
        let g = test_graph();
        let mut rng = Rng::new(3);
        let sc = randn(&[g.num_edges(), 2], 1.0, &mut rng);
        let mut tape = Tape::<f64>::new();
        let v = tape.constant(sc.clone());
        let a = edge_softmax(&mut tape, &g, v).unwrap();
        for i in 0..5 {
            for h in 0..2 {
                let s: f64 = g.in_edges(i).map(|e| tape.value(a).data()[e * 2 + h]).sum();
                let want = if g.in_edges(i).is_empty() { 0.0 } else { 1.0 };
                assert!((s - want).abs() < 1e-12);
            }
        }
        let w = randn(&[g.num_edges(), 2], 1.0, &mut rng);
        let rep = check_inputs(&[sc], |t, v| {
            let a = edge_softmax(t, &g, v[0])?;
            let wv = t.constant(w.clone());
            crate::ops::mul(t, a, wv)
        })
        .unwrap();
        assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);

        let idx = g.typed_source_index();
        let q = randn(&[5, 6], 1.0, &mut rng);
        let k = randn(&[10, 6], 1.0, &mut rng);
        let rep = check_inputs(&[q, k], |t, v| edge_dot(t, &g, &idx, v[0], v[1], 3, 0.7)).unwrap();
        assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);

        let a = randn(&[5, 2], 1.0, &mut rng);
        let b = randn(&[5, 2], 1.0, &mut rng);
        let rep = check_inputs(&[a, b], |t, v| edge_add(t, &g, v[0], v[1])).unwrap();
        assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
    }

    /// The fused head scores: gradients by central differences in f64, values and gradients
    /// equal to the unrolled `sum(mul(z, a), 2)` (f32, 8 heads of 8 as GAT has them, and odd
    /// widths), and a clear error for mismatched shapes.
    #[test]
    fn head_scores_gradcheck_and_match_the_unrolled_ops() {
        let mut rng = Rng::new(4);
        let z = randn(&[5, 3, 4], 1.0, &mut rng);
        let a = randn(&[3, 4], 1.0, &mut rng);
        let w = randn(&[5, 3], 1.0, &mut rng);
        let rep = check_inputs(&[z, a], |t, v| {
            let s = head_scores(t, v[0], v[1])?;
            let wv = t.constant(w.clone());
            crate::ops::mul(t, s, wv)
        })
        .unwrap();
        assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
        for (n, h, f) in [(37usize, 8usize, 8usize), (9, 1, 7), (4, 2, 17)] {
            let z: Tensor<f32> = Tensor::from_fn(&[n, h, f], |_| rng.normal() as f32);
            let a: Tensor<f32> = Tensor::from_fn(&[h, f], |_| rng.normal() as f32);
            let g: Tensor<f32> = Tensor::from_fn(&[n, h], |_| rng.normal() as f32);
            let run = |fused: bool| {
                let mut t = Tape::<f32>::new();
                let (zv, av) = (t.input(z.clone()), t.input(a.clone()));
                let s = if fused {
                    head_scores(&mut t, zv, av).unwrap()
                } else {
                    let p = crate::ops::mul(&mut t, zv, av).unwrap();
                    crate::ops::sum(&mut t, p, 2, false).unwrap()
                };
                t.backward_with(s, g.clone()).unwrap();
                let val = t.value(s).clone();
                (
                    val,
                    t.grad(zv).unwrap().clone(),
                    t.grad(av).unwrap().clone(),
                )
            };
            let (f, r) = (run(true), run(false));
            let close = |x: &Tensor<f32>, y: &Tensor<f32>, what: &str| {
                assert_eq!(x.shape(), y.shape());
                for (p, q) in x.data().iter().zip(y.data()) {
                    assert!(
                        (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                        "{what}: {p} vs {q}"
                    );
                }
            };
            close(&f.0, &r.0, "scores");
            close(&f.1, &r.1, "dz");
            close(&f.2, &r.2, "da");
        }
        let mut t = Tape::<f64>::new();
        let z = t.constant(Tensor::zeros(&[4, 2, 3]));
        let a = t.constant(Tensor::zeros(&[2, 4]));
        let e = head_scores(&mut t, z, a).unwrap_err().to_string();
        assert!(e.contains("(heads, F)"), "{e}");
    }

    #[test]
    fn shape_errors_are_reported() {
        let g = test_graph();
        let mut tape = Tape::<f64>::new();
        let s = tape.constant(Tensor::zeros(&[4, 3]));
        let a = tape.constant(Tensor::zeros(&[g.num_edges(), 1]));
        assert!(weighted_aggregate(&mut tape, &g, g.source_index(), s, a).is_err());
        let s = tape.constant(Tensor::zeros(&[5, 3]));
        let a2 = tape.constant(Tensor::zeros(&[g.num_edges(), 2]));
        let e = weighted_aggregate(&mut tape, &g, g.source_index(), s, a2).unwrap_err();
        assert!(e.to_string().contains("not divisible"), "{e}");
    }
}
