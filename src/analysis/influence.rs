//! Reach of message passing (exercise 2.5, the numeric side of long-range dependencies).
//!
//! After `L` rounds, node `i`'s state depends only on the nodes within `L` hops (`h_i^L` is a
//! function of `{h_j^0 : dist(j, i) ≤ L}`), so a dependency `k > L` hops away is invisible; and
//! within reach, the Jacobian influence `I(i, j) = ‖∂h_i^L/∂h_j^0‖_F` (Xu et al. 2018) typically
//! decays with distance — squashed through the products of normalized aggregations along paths.
//! A Transformer sidesteps the depth limit by using the complete graph (every pair at distance 1),
//! which costs `n(n−1)` edges: O(n²) messages per layer instead of O(|E|).
//!
//! [`influence`] computes, for one target node, the hop distance of every node and `I(i, j)` by
//! one backward pass per output component, and aggregates them by hop distance.

use crate::autograd::{ParamStore, Tape};
use crate::error::Result;
use crate::graph::Graph;
use crate::init::Rng;
use crate::invalid;
use crate::nn::linear::Linear;
use crate::nn::message_passing::{Activation, Aggregation, Message, MessagePassing, Update};
use crate::nn::module::VarBuilder;
use crate::tensor::Tensor;
use serde::Serialize;

/// Influence aggregated over the nodes at one hop distance.
#[derive(Clone, Debug, Serialize)]
pub struct HopInfluence {
    pub hop: usize,
    pub nodes: usize,
    /// Mean of `‖∂h_i^L/∂h_j^0‖` over the nodes at this distance.
    pub mean: f64,
    pub max: f64,
    /// Share of the total influence (sums to 1 over hops).
    pub share: f64,
}

/// Result of [`influence`].
#[derive(Clone, Debug, Serialize)]
pub struct InfluenceReport {
    pub graph: String,
    pub nodes: usize,
    pub edges: usize,
    /// Edges the complete directed graph on these nodes would have (attention's cost).
    pub complete_graph_edges: usize,
    pub target: usize,
    pub layers: usize,
    pub hidden: usize,
    /// Nodes within `layers` hops of the target (the only ones that can influence it).
    pub reachable: usize,
    /// Nodes connected to the target at any distance.
    pub connected: usize,
    /// Largest influence of a node farther than `layers` hops (exactly 0).
    pub max_influence_beyond_reach: f64,
    pub by_hop: Vec<HopInfluence>,
}

/// The most message-passing rounds [`influence`] takes.
pub const MAX_LAYERS: usize = 256;
/// The widest random layers [`influence`] takes.
pub const MAX_HIDDEN: usize = 4096;

/// `L` rounds of a GCN-like layer with fixed random weights: message `W_m h_j`, mean
/// aggregation over `N(i)` (self loop added), update `tanh(W_u [h_i ‖ a_i] + b)`, width `hidden`,
/// seeded; `h^0` is standard normal. Returns the report for `target`.
pub fn influence(
    name: &str,
    graph: &Graph,
    target: usize,
    layers: usize,
    hidden: usize,
    seed: u64,
) -> Result<InfluenceReport> {
    if layers == 0 || hidden == 0 {
        return Err(invalid!("influence needs layers >= 1 and hidden >= 1"));
    }
    // Stated limits: past a graph's diameter (Cora's is 19) more rounds reach no new node,
    // while the tape grows with L·hidden.
    if layers > MAX_LAYERS || hidden > MAX_HIDDEN {
        return Err(invalid!(
            "influence takes at most {MAX_LAYERS} layers and hidden {MAX_HIDDEN}, got {layers} and {hidden}"
        ));
    }
    let dist = graph.hop_distances_to(target)?;
    let g = graph.with_self_loops();
    let n = g.num_nodes();
    // One backward pass per hidden unit, each on a tape of L layers holding per layer the
    // message, the gathered edge messages, the mean, the concatenation, the update and its
    // tanh (`6·N + E` rows of `hidden`), and as much again for their gradients.
    crate::memory::Estimate::new()
        .elements(
            format!("the tape of {layers} layers"),
            2.0 * layers as f64 * (6.0 * n as f64 + g.num_edges() as f64) * hidden as f64,
            8,
        )
        .check("gnn influence")?;
    let mut rng = Rng::new(seed);
    let mut store = ParamStore::<f64>::new();
    let mut stack = Vec::new();
    for l in 0..layers {
        let mut vb = VarBuilder::init(&mut store, &mut rng);
        let mut layers = vb.pp("layers");
        let mut layer = layers.pp(l);
        let m = Linear::new(layer.pp("message"), hidden, hidden, false)?;
        let u = Linear::new(layer.pp("update"), 2 * hidden, hidden, true)?;
        stack.push(MessagePassing::new(
            Message::Linear(m),
            Aggregation::Mean,
            Update::ConcatLinear {
                linear: u,
                activation: Activation::Tanh,
            },
        ));
    }
    let h0 = Tensor::<f64>::from_fn(&[n, hidden], |_| rng.normal());
    let mut sq = vec![0.0f64; n];
    for c in 0..hidden {
        let mut tape = Tape::<f64>::new();
        let x = tape.input(h0.clone());
        let mut h = x;
        for layer in &stack {
            h = layer.forward(&mut tape, &store, &g, h)?;
        }
        let mut seedt = Tensor::<f64>::zeros(&[n, hidden]);
        seedt.data_mut()[target * hidden + c] = 1.0;
        tape.backward_with(h, seedt)?;
        if let Some(gx) = tape.grad(x) {
            for (j, row) in gx.data().chunks(hidden).enumerate() {
                sq[j] += row.iter().map(|v| v * v).sum::<f64>();
            }
        }
    }
    let inf: Vec<f64> = sq.iter().map(|v| v.sqrt()).collect();
    let total: f64 = inf.iter().sum();
    let max_hop = dist.iter().flatten().copied().max().unwrap_or(0);
    let mut by_hop = Vec::new();
    let mut beyond = 0.0f64;
    for k in 0..=max_hop {
        let vals: Vec<f64> = (0..n)
            .filter(|&j| dist[j] == Some(k))
            .map(|j| inf[j])
            .collect();
        if k > layers {
            beyond = vals.iter().copied().fold(beyond, f64::max);
        }
        let s: f64 = vals.iter().sum();
        by_hop.push(HopInfluence {
            hop: k,
            nodes: vals.len(),
            mean: if vals.is_empty() {
                0.0
            } else {
                s / vals.len() as f64
            },
            max: vals.iter().copied().fold(0.0, f64::max),
            share: if total > 0.0 { s / total } else { 0.0 },
        });
    }
    for j in 0..n {
        if dist[j].is_none() {
            beyond = beyond.max(inf[j]);
        }
    }
    Ok(InfluenceReport {
        graph: name.to_string(),
        nodes: n,
        edges: graph.num_edges(),
        complete_graph_edges: n * n.saturating_sub(1),
        target,
        layers,
        hidden,
        reachable: dist
            .iter()
            .filter(|d| d.is_some_and(|d| d <= layers))
            .count(),
        connected: dist.iter().filter(|d| d.is_some()).count(),
        max_influence_beyond_reach: beyond,
        by_hop,
    })
}

/// The chain version used by exercise 2.5: a path of `n` nodes, target at one end, so the hop
/// distance of node `j` is `j`.
pub fn chain_influence(
    n: usize,
    layers: usize,
    hidden: usize,
    seed: u64,
) -> Result<InfluenceReport> {
    influence("chain", &Graph::chain(n), 0, layers, hidden, seed)
}

/// Draws mean influence (log scale) against hop distance, one line per report (SVG or PNG by
/// the extension). Influence is exactly 0 beyond `L` hops, which a log axis cannot show: the
/// x axis ends at the last hop with a positive value, and the title says so.
pub fn plot_influence(reports: &[InfluenceReport], path: &std::path::Path) -> Result<()> {
    use crate::plot::{write_charts, Axis, Chart, Mark, Series};
    let layers = reports.first().map_or(0, |r| r.layers);
    let series = reports
        .iter()
        .map(|r| {
            let pts = r
                .by_hop
                .iter()
                .filter(|h| h.mean > 0.0)
                .map(|h| (h.hop as f64, h.mean))
                .collect();
            Series::new(
                format!("{} (node {})", r.graph, r.target),
                pts,
                Mark::LinePoints,
            )
        })
        .collect();
    write_charts(
        path,
        &[Chart {
            title: format!("Jacobian influence by hop, L = {layers} (0 beyond {layers} hops)"),
            x: Axis::new("hop distance from the target node (edges)").integer(),
            y: Axis::new("mean Frobenius norm ‖∂h_i(L) / ∂h_j(0)‖ (log scale)").log(),
            series,
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_influence_is_zero_beyond_l_hops_and_decays() {
        let r = chain_influence(12, 3, 8, 0).unwrap();
        assert_eq!(r.reachable, 4);
        assert_eq!(r.max_influence_beyond_reach, 0.0);
        for h in &r.by_hop {
            if h.hop <= 3 {
                assert!(h.mean > 0.0, "{h:?}");
            } else {
                assert_eq!(h.mean, 0.0, "{h:?}");
            }
        }
        let share: f64 = r.by_hop.iter().map(|h| h.share).sum();
        assert!((share - 1.0).abs() < 1e-12);
        // Farther is weaker on the chain: hop 3 well below hop 0.
        assert!(r.by_hop[3].mean < r.by_hop[0].mean, "{:?}", r.by_hop);
        assert_eq!(r.complete_graph_edges, 132);
    }

    #[test]
    fn influence_on_a_ring_and_plot() {
        // ‖∂h_i/∂h_j‖ for one pair by central differences through the same layers.
        let g = Graph::from_edges(4, &[(1, 0), (2, 1), (3, 2), (0, 3)]).unwrap();
        let r = influence("ring", &g, 0, 2, 3, 1).unwrap();
        assert_eq!(r.reachable, 3);
        assert_eq!(
            r.by_hop.iter().map(|h| h.nodes).collect::<Vec<_>>(),
            vec![1, 1, 1, 1]
        );
        assert_eq!(r.by_hop[3].mean, 0.0);
        assert!(r.by_hop[2].mean > 0.0);
        let plot = std::env::temp_dir().join(format!("nabla_influence_{}.svg", std::process::id()));
        plot_influence(std::slice::from_ref(&r), &plot).unwrap();
        let svg = std::fs::read_to_string(&plot).unwrap();
        assert!(svg.contains("<svg"));
        if crate::plot::tests::font_or_skip() {
            // The hop axis ends at the last positive influence (hop L), not at the farthest
            // node, and its ticks are whole hops.
            let texts = crate::plot::tests::svg_texts(&svg);
            assert!(
                texts.iter().any(|t| t.starts_with("Jacobian influence")),
                "{texts:?}"
            );
            assert!(
                texts.iter().any(|t| t.starts_with("hop distance")),
                "{texts:?}"
            );
            let ticks: Vec<i64> = crate::plot::tests::svg_x_ticks(&svg)
                .iter()
                .map(|t| t.parse().unwrap())
                .collect();
            let hops = r
                .by_hop
                .iter()
                .filter(|h| h.mean > 0.0)
                .map(|h| h.hop)
                .max()
                .unwrap();
            assert_eq!(ticks.last(), Some(&(hops as i64)), "{ticks:?}");
        }
        let _ = std::fs::remove_file(plot);
    }
}
