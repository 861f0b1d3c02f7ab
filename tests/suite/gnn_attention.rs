//! Attention as message passing: on the complete graph with self loops it equals dense
//! multi-head attention, on a sparse graph dense attention with the non-edges masked — forward
//! and every gradient, in f64 (1e-12) and f32 (1e-5); and it reproduces PyTorch's
//! `nn.MultiheadAttention` fixtures (../shared/fixtures/attention).

use crate::common;

use nabla::autograd::{ParamStore, Tape};
use nabla::graph::Graph;
use nabla::init::Rng;
use nabla::nn::masked_attention::{dense_attention, graph_mask, AttentionParams, DensePath};
use nabla::nn::message_passing::{Aggregation, Message, MessagePassing, NodeInput, Update};
use nabla::nn::{Linear, VarBuilder};
use nabla::{Element, Tensor};

fn attention_layer(
    store: &mut ParamStore<f64>,
    dim: usize,
    heads: usize,
    rng: &mut Rng,
) -> MessagePassing {
    MessagePassing::attention(VarBuilder::init(store, rng).pp("attn"), dim, heads).unwrap()
}

/// Max |a − b| / max(1, |b|) over forward output, input gradient and every parameter gradient,
/// between message passing and the one dense attention of `nn::attention` with the graph's
/// non-edges masked (`AttnMask`, `true` = blocked): (a) its reference unrolled into primitive
/// ops, (b) the fused op (weights packed by a differentiable concat, so the gradients reach the
/// same parameters).
fn compare<T: Element>(
    graph: &Graph,
    tokens: usize,
    dim: usize,
    heads: usize,
    seed: u64,
) -> (f64, f64) {
    let mut rng = Rng::new(seed);
    let mut store64 = ParamStore::<f64>::new();
    let layer = attention_layer(&mut store64, dim, heads, &mut rng);
    let store: ParamStore<T> = store64.cast();
    let p = AttentionParams::of(&layer).unwrap();
    let x = Tensor::<T>::from_fn(&[tokens, dim], |_| T::c(rng.normal()));
    let dy = Tensor::<T>::from_fn(&[tokens, dim], |_| T::c(rng.normal()));
    let mask = graph_mask(graph);
    let run = |mode: usize| {
        let mut tape = Tape::<T>::new();
        let xv = tape.input(x.clone());
        let y = match mode {
            0 => layer.forward(&mut tape, &store, graph, xv).unwrap(),
            1 => dense_attention(
                &mut tape,
                &store,
                &p,
                xv,
                Some(mask.clone()),
                DensePath::Reference,
            )
            .unwrap(),
            _ => dense_attention(
                &mut tape,
                &store,
                &p,
                xv,
                Some(mask.clone()),
                DensePath::Fused,
            )
            .unwrap(),
        };
        tape.backward_with(y, dy.clone()).unwrap();
        let mut g = store.clone();
        g.zero_grad();
        tape.accumulate_grads(&mut g).unwrap();
        let mut out = vec![tape.value(y).clone(), tape.grad(xv).unwrap().clone()];
        out.extend(g.iter().map(|p| p.grad.clone()));
        out
    };
    let (mp, dense, fused) = (run(0), run(1), run(2));
    assert_eq!(mp.len(), 2 + 8);
    let diff = |other: &[Tensor<T>]| {
        mp.iter()
            .zip(other)
            .map(|(a, b)| {
                let scale = b.data().iter().fold(1.0f64, |m, v| m.max(v.as_f64().abs()));
                a.max_abs_diff(b).unwrap() / scale
            })
            .fold(0.0, f64::max)
    };
    let r = (diff(&dense), diff(&fused));
    eprintln!("{} {tokens} tokens, dim {dim}, {heads} heads, {} edges: max rel diff vs unrolled dense {:.2e}, vs fused dense {:.2e}", T::DTYPE, graph.num_edges(), r.0, r.1);
    r
}

#[test]
fn complete_graph_attention_equals_dense_attention() {
    let g = Graph::complete(7, true);
    let e64 = compare::<f64>(&g, 7, 8, 2, 1);
    assert!(
        e64.0 < 1e-12 && e64.1 < 1e-12,
        "f64 max rel diff (unrolled, fused) {e64:?}"
    );
    let e32 = compare::<f32>(&g, 7, 8, 2, 2);
    assert!(
        e32.0 < 1e-5 && e32.1 < 1e-5,
        "f32 max rel diff (unrolled, fused) {e32:?}"
    );
    let e64 = compare::<f64>(&Graph::complete(5, true), 5, 12, 3, 3);
    assert!(
        e64.0 < 1e-12 && e64.1 < 1e-12,
        "f64 max rel diff (unrolled, fused) {e64:?}"
    );
}

#[test]
fn sparse_graph_attention_equals_masked_dense_attention() {
    // A sparse directed graph with self loops, a node with one in-edge and a node that only
    // hears itself.
    let g = Graph::from_edges(
        6,
        &[
            (1, 0),
            (2, 0),
            (0, 1),
            (3, 2),
            (4, 2),
            (5, 2),
            (0, 4),
            (2, 5),
            (4, 5),
        ],
    )
    .unwrap()
    .with_self_loops();
    let e64 = compare::<f64>(&g, 6, 8, 2, 4);
    assert!(
        e64.0 < 1e-12 && e64.1 < 1e-12,
        "f64 max rel diff (unrolled, fused) {e64:?}"
    );
    let e32 = compare::<f32>(&g, 6, 8, 2, 5);
    assert!(
        e32.0 < 1e-5 && e32.1 < 1e-5,
        "f32 max rel diff (unrolled, fused) {e32:?}"
    );
}

#[test]
fn attention_gradchecks() {
    let g = Graph::chain(4).with_self_loops();
    let mut rng = Rng::new(9);
    let mut store = ParamStore::<f64>::new();
    let layer = attention_layer(&mut store, 4, 2, &mut rng);
    let x = nabla::gradcheck::randn(&[4, 4], 1.0, &mut rng);
    let rep = nabla::gradcheck::check_gradients(&store, &[x], &Default::default(), |t, p, v| {
        layer.forward(t, p, &g, v[0])
    })
    .unwrap();
    assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
}

/// PyTorch `nn.MultiheadAttention` (float64): a batch of B sequences is a disjoint union of B
/// complete graphs; key padding removes the edges that leave padded keys.
#[test]
fn matches_pytorch_multihead_attention_fixtures() {
    let Some(dir) = common::shared("fixtures/attention") else {
        return;
    };
    let dir = dir.display();
    for (case, lens) in [("case1", None), ("case2", Some([3usize, 4]))] {
        let path = format!("{dir}/{case}.safetensors");
        // The float tensors only (case2 also holds a BOOL key_padding_mask, which nabla's
        // loader rightly refuses; the valid lengths are in the README table).
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let get = |n: &str| {
            let v = st.tensor(n).unwrap_or_else(|_| panic!("{n} missing"));
            assert_eq!(v.dtype(), safetensors::Dtype::F64);
            let data: Vec<f64> = v
                .data()
                .chunks(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Tensor::<f64>::new(v.shape(), data).unwrap()
        };
        let (b, t, d, heads) = (2, 5, 8, 2);
        let win = get("in_proj_weight");
        let bin = get("in_proj_bias");
        // PyTorch's packed in_proj split into the q, k, v projections: a state dict loaded
        // through the modules' own constructors.
        let mut tensors = std::collections::BTreeMap::new();
        for (k, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            tensors.insert(
                format!("{name}.weight"),
                win.slice_rows(k * d, (k + 1) * d).unwrap(),
            );
            tensors.insert(
                format!("{name}.bias"),
                bin.slice_rows(k * d, (k + 1) * d).unwrap(),
            );
        }
        tensors.insert("out_proj.weight".to_string(), get("out_proj.weight"));
        tensors.insert("out_proj.bias".to_string(), get("out_proj.bias"));
        let mut store = ParamStore::<f64>::new();
        let mut vb = VarBuilder::load(&mut store, &tensors);
        let (q, k, v, out) = (
            Linear::new(vb.pp("q_proj"), d, d, true).unwrap(),
            Linear::new(vb.pp("k_proj"), d, d, true).unwrap(),
            Linear::new(vb.pp("v_proj"), d, d, true).unwrap(),
            Linear::new(vb.pp("out_proj"), d, d, true).unwrap(),
        );
        let layer = MessagePassing::new(
            Message::Linear(v),
            Aggregation::Attention {
                heads,
                query: q,
                key: k,
                dropout: 0.0,
            },
            Update::Linear(out),
        );
        let mut edges = Vec::new();
        for bb in 0..b {
            let valid = lens.map_or(t, |l| l[bb]);
            for i in 0..t {
                for j in 0..valid {
                    edges.push((bb * t + j, bb * t + i));
                }
            }
        }
        let g = Graph::from_edges(b * t, &edges).unwrap();
        let x = get("x").reshape(&[b * t, d]).unwrap();
        let mut tape = Tape::<f64>::new();
        let xv = tape.input(x);
        let y = layer.forward(&mut tape, &store, &g, xv).unwrap();
        let close = |got: &Tensor<f64>, want: Tensor<f64>, what: &str| {
            let want = want.reshape(got.shape()).unwrap();
            let e = got.max_abs_diff(&want).unwrap();
            assert!(e <= 1e-10, "{case} {what}: max abs diff {e}");
        };
        close(tape.value(y), get("y"), "y");
        // Attention weights per edge against (B, H, T, T).
        let mut t2 = Tape::<f64>::no_grad();
        let xc = t2.constant(tape.value(xv).clone());
        let a = layer
            .aggregation
            .attention_weights(&mut t2, &store, &g, NodeInput::Dense(xc), None)
            .unwrap()
            .unwrap();
        let want = get("attn_weights");
        for e in 0..g.num_edges() {
            let (j, i) = (g.src()[e], g.dst()[e]);
            let (bb, ii, jj) = (i / t, i % t, j % t);
            for h in 0..heads {
                let w = want.data()[((bb * heads + h) * t + ii) * t + jj];
                assert!(
                    (t2.value(a).data()[e * heads + h] - w).abs() <= 1e-10,
                    "{case} attn"
                );
            }
        }
        let dy = get("dy").reshape(&[b * t, d]).unwrap();
        tape.backward_with(y, dy).unwrap();
        let mut grads = store.clone();
        grads.zero_grad();
        tape.accumulate_grads(&mut grads).unwrap();
        close(tape.grad(xv).unwrap(), get("dx"), "dx");
        let dw = get("d_in_proj_weight");
        let db = get("d_in_proj_bias");
        for (k, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            close(
                &grads.by_name(&format!("{name}.weight")).unwrap().grad,
                dw.slice_rows(k * d, (k + 1) * d).unwrap(),
                name,
            );
            close(
                &grads.by_name(&format!("{name}.bias")).unwrap().grad,
                db.slice_rows(k * d, (k + 1) * d).unwrap(),
                name,
            );
        }
        close(
            &grads.by_name("out_proj.weight").unwrap().grad,
            get("d_out_proj.weight"),
            "d_out_proj.weight",
        );
        close(
            &grads.by_name("out_proj.bias").unwrap().grad,
            get("d_out_proj.bias"),
            "d_out_proj.bias",
        );
    }
}

/// The graph-attention equivalences, gradient checks and PyTorch fixtures again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &[
            "complete_graph_attention_equals_dense_attention",
            "sparse_graph_attention_equals_masked_dense_attention",
            "attention_gradchecks",
            "matches_pytorch_multihead_attention_fixtures",
        ],
    );
}
