//! Dense multi-head self-attention with an optional `(T, T)` mask, unrolled into primitive ops
//! (`linear`, `permute`, `bmm`, `softmax`): the reference path that attention-as-message-passing
//! is tested against, and the O(T²) baseline of `nabla bench gnn --model dense`.
//!
//! `Q, K, V = x W_qᵀ + b_q, …` split into `H` heads of `d = D/H`;
//! `P_h = softmax(Q_h K_hᵀ/√d + M)` with `M_ij = 0` where `i` may attend to `j` and `−∞` elsewhere;
//! `y = concat_h(P_h V_h) W_oᵀ + b_o`. Row `i` of the mask lists the keys of query `i` — on a
//! graph, the sources `N(i)`.

use crate::autograd::{ParamStore, Tape, Var};
use crate::error::Result;
use crate::nn::message_passing::LinearParams;
use crate::ops;
use crate::shape_err;
use crate::tensor::{Element, Tensor};

/// The four projections of `nn.MultiheadAttention`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub query: LinearParams,
    pub key: LinearParams,
    pub value: LinearParams,
    pub out: LinearParams,
    pub heads: usize,
}

/// `x (T, D) → (T, D)`; `mask[i·T + j]` true where query `i` may attend to key `j`.
pub fn dense_self_attention<T: Element>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    p: &AttentionParams,
    x: Var,
    mask: Option<&[bool]>,
) -> Result<Var> {
    let s = tape.shape(x).to_vec();
    if s.len() != 2 || p.heads == 0 || !s[1].is_multiple_of(p.heads) {
        return Err(shape_err!(
            "dense_self_attention",
            "input {:?} must be (tokens, D) with D divisible by {} heads",
            s,
            p.heads
        ));
    }
    let (t, d, h) = (s[0], s[1], p.heads);
    let dh = d / h;
    let split = |tape: &mut Tape<T>, l: &LinearParams| -> Result<Var> {
        let y = l.forward(tape, store, x)?; // (T, D)
        let y = ops::reshape(tape, y, &[t, h, dh])?;
        ops::permute(tape, y, &[1, 0, 2]) // (H, T, dh)
    };
    let q = split(tape, &p.query)?;
    let k = split(tape, &p.key)?;
    let v = split(tape, &p.value)?;
    let sc = ops::bmm(tape, q, k, false, true)?; // (H, T, T)
    let mut sc = ops::scale(tape, sc, 1.0 / (dh as f64).sqrt())?;
    if let Some(m) = mask {
        if m.len() != t * t {
            return Err(shape_err!(
                "dense_self_attention",
                "mask has {} entries for {t}×{t} scores",
                m.len()
            ));
        }
        let bias = Tensor::from_fn(
            &[1, t, t],
            |k| if m[k] { T::zero() } else { T::neg_infinity() },
        );
        let bias = tape.constant(bias);
        sc = ops::add(tape, sc, bias)?;
    }
    let pr = ops::softmax(tape, sc)?;
    let o = ops::bmm(tape, pr, v, false, false)?; // (H, T, dh)
    let o = ops::permute(tape, o, &[1, 0, 2])?; // (T, H, dh)
    let o = ops::reshape(tape, o, &[t, d])?;
    p.out.forward(tape, store, o)
}
