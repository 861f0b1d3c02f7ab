//! Directed graphs for message passing.
//!
//! An edge `j → i` carries a message from source `j` to destination `i`; `N(i)` is the set of
//! sources of the edges into `i`. Edges are stored as CSR **sorted by destination**: the
//! incoming edges of node `i` are the contiguous range `indptr[i]..indptr[i+1]`, so every
//! aggregation runs in parallel over destinations, each writing only its own output row — no
//! atomics. Backward passes that must sum over the edges *leaving* a node use
//! [`EdgeIndex::groups`], the same edges grouped by source row (a counting sort, built once).

use crate::error::Result;
use crate::invalid;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

/// Which row of a node-level table each edge reads, plus the edges grouped by that row.
///
/// For plain messages the row is the source node; for per-edge-type messages it is
/// `src · R + type` into a `(N·R, d)` table. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct EdgeIndex {
    rows: Arc<Vec<usize>>,
    num_rows: usize,
    groups: Arc<OnceLock<(Vec<usize>, Vec<usize>)>>,
}

impl EdgeIndex {
    /// `rows[e] < num_rows` for every edge `e` (in CSR order).
    pub fn new(rows: Vec<usize>, num_rows: usize) -> Result<Self> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= num_rows) {
            return Err(invalid!("edge row {bad} out of range for {num_rows} rows"));
        }
        Ok(EdgeIndex {
            rows: Arc::new(rows),
            num_rows,
            groups: Arc::new(OnceLock::new()),
        })
    }
    pub fn rows(&self) -> &[usize] {
        &self.rows
    }
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }
    /// `(ptr, edges)`: the edges reading row `r` are `edges[ptr[r]..ptr[r+1]]`, in CSR order.
    pub fn groups(&self) -> (&[usize], &[usize]) {
        let g = self.groups.get_or_init(|| {
            let mut ptr = vec![0usize; self.num_rows + 1];
            for &r in self.rows.iter() {
                ptr[r + 1] += 1;
            }
            for r in 0..self.num_rows {
                ptr[r + 1] += ptr[r];
            }
            let mut next = ptr.clone();
            let mut edges = vec![0usize; self.rows.len()];
            for (e, &r) in self.rows.iter().enumerate() {
                edges[next[r]] = e;
                next[r] += 1;
            }
            (ptr, edges)
        });
        (&g.0, &g.1)
    }
}

/// A directed multigraph with optional edge types, CSR by destination.
#[derive(Clone, Debug)]
pub struct Graph {
    num_nodes: usize,
    /// (N+1) incoming edges of node `i` are `indptr[i]..indptr[i+1]`.
    indptr: Arc<Vec<usize>>,
    /// (E) source of each edge, CSR order.
    dst: Arc<Vec<usize>>,
    /// (E) type of each edge (all 0 for untyped graphs).
    edge_type: Arc<Vec<usize>>,
    num_edge_types: usize,
    /// (E) position of each edge in the list it was built from.
    orig: Arc<Vec<usize>>,
    /// Rows = sources; cached so that its by-source grouping is built once.
    source_index: EdgeIndex,
    /// [`Graph::gcn_norm`], computed on first use (a GCN layer reads it every forward).
    gcn_norm: Arc<OnceLock<Vec<f64>>>,
}

impl Graph {
    /// From `(src, dst)` pairs; order and duplicates are kept (sorted stably by destination,
    /// then source). Errors name the offending edge.
    pub fn from_edges(num_nodes: usize, edges: &[(usize, usize)]) -> Result<Self> {
        let typed: Vec<(usize, usize, usize)> = edges.iter().map(|&(s, d)| (s, d, 0)).collect();
        Self::from_typed_edges(num_nodes, &typed, 1)
    }

    /// From `(src, dst, type)` triples with `type < num_edge_types`.
    pub fn from_typed_edges(
        num_nodes: usize,
        edges: &[(usize, usize, usize)],
        num_edge_types: usize,
    ) -> Result<Self> {
        if num_edge_types == 0 {
            return Err(invalid!("a graph needs at least one edge type"));
        }
        for (k, &(s, d, t)) in edges.iter().enumerate() {
            if s >= num_nodes || d >= num_nodes {
                return Err(invalid!(
                    "edge {k} ({s} -> {d}) names a node out of range for {num_nodes} nodes"
                ));
            }
            if t >= num_edge_types {
                return Err(invalid!(
                    "edge {k} ({s} -> {d}) has type {t}, but there are {num_edge_types} types"
                ));
            }
        }
        let mut order: Vec<usize> = (0..edges.len()).collect();
        order.sort_by_key(|&k| (edges[k].1, edges[k].0, k));
        let mut indptr = vec![0usize; num_nodes + 1];
        for &(_, d, _) in edges {
            indptr[d + 1] += 1;
        }
        for i in 0..num_nodes {
            indptr[i + 1] += indptr[i];
        }
        let src: Vec<usize> = order.iter().map(|&k| edges[k].0).collect();
        let dst: Vec<usize> = order.iter().map(|&k| edges[k].1).collect();
        let edge_type: Vec<usize> = order.iter().map(|&k| edges[k].2).collect();
        Ok(Graph {
            num_nodes,
            indptr: Arc::new(indptr),
            dst: Arc::new(dst),
            edge_type: Arc::new(edge_type),
            num_edge_types,
            orig: Arc::new(order),
            source_index: EdgeIndex::new(src, num_nodes)?,
            gcn_norm: Arc::new(OnceLock::new()),
        })
    }

    /// The complete directed graph: every ordered pair `j ≠ i` (n(n−1) edges), plus the n self
    /// loops when `self_loops` — the graph on which attention is message passing.
    pub fn complete(n: usize, self_loops: bool) -> Self {
        let mut e = Vec::with_capacity(n * n);
        for i in 0..n {
            for j in 0..n {
                if i != j || self_loops {
                    e.push((j, i));
                }
            }
        }
        Self::from_edges(n, &e).expect("complete graph edges are in range")
    }

    /// A path `0 − 1 − … − (n−1)` with edges both ways (2(n−1) edges).
    pub fn chain(n: usize) -> Self {
        let mut e = Vec::with_capacity(2 * n);
        for i in 1..n {
            e.push((i - 1, i));
            e.push((i, i - 1));
        }
        Self::from_edges(n, &e).expect("chain edges are in range")
    }

    /// Disjoint union: node `k` of graph `g` becomes `offset_g + k` (a batch of graphs).
    pub fn disjoint_union(graphs: &[Graph]) -> Result<Self> {
        let types = graphs.iter().map(|g| g.num_edge_types).max().unwrap_or(1);
        let mut e = Vec::new();
        let mut off = 0;
        for g in graphs {
            for k in 0..g.num_edges() {
                e.push((off + g.src()[k], off + g.dst()[k], g.edge_type[k]));
            }
            off += g.num_nodes;
        }
        Self::from_typed_edges(off, &e, types)
    }

    fn edge_triples(&self) -> Vec<(usize, usize, usize)> {
        (0..self.num_edges())
            .map(|k| (self.src()[k], self.dst[k], self.edge_type[k]))
            .collect()
    }

    /// Adds `i → j` for every `j → i` that lacks it, and removes duplicate edges.
    pub fn symmetric(&self) -> Self {
        let mut e = self.edge_triples();
        let rev: Vec<_> = e.iter().map(|&(s, d, t)| (d, s, t)).collect();
        e.extend(rev);
        e.sort_unstable_by_key(|&(s, d, t)| (d, s, t));
        e.dedup();
        Self::from_typed_edges(self.num_nodes, &e, self.num_edge_types)
            .expect("edges of a valid graph")
    }

    /// Adds a self loop `i → i` (type 0) to every node that has none.
    pub fn with_self_loops(&self) -> Self {
        let mut e = self.edge_triples();
        let mut has = vec![false; self.num_nodes];
        for &(s, d, _) in &e {
            if s == d {
                has[s] = true;
            }
        }
        e.extend((0..self.num_nodes).filter(|&i| !has[i]).map(|i| (i, i, 0)));
        Self::from_typed_edges(self.num_nodes, &e, self.num_edge_types)
            .expect("edges of a valid graph")
    }

    pub fn num_nodes(&self) -> usize {
        self.num_nodes
    }
    pub fn num_edges(&self) -> usize {
        self.dst.len()
    }
    pub fn num_edge_types(&self) -> usize {
        self.num_edge_types
    }
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }
    pub fn src(&self) -> &[usize] {
        self.source_index.rows()
    }
    pub fn dst(&self) -> &[usize] {
        &self.dst
    }
    pub fn edge_types(&self) -> &[usize] {
        &self.edge_type
    }
    /// For each edge (CSR order), its position in the list the graph was built from.
    pub fn original_positions(&self) -> &[usize] {
        &self.orig
    }
    /// Incoming edges of node `i` (CSR positions).
    pub fn in_edges(&self, i: usize) -> std::ops::Range<usize> {
        self.indptr[i]..self.indptr[i + 1]
    }
    /// `|N(i)|` for every node.
    pub fn in_degrees(&self) -> Vec<usize> {
        (0..self.num_nodes)
            .map(|i| self.indptr[i + 1] - self.indptr[i])
            .collect()
    }
    pub fn out_degrees(&self) -> Vec<usize> {
        let mut d = vec![0; self.num_nodes];
        for &s in self.src() {
            d[s] += 1;
        }
        d
    }
    /// Edge rows = source nodes.
    pub fn source_index(&self) -> &EdgeIndex {
        &self.source_index
    }
    /// Edge rows = `src · R + type` into a `(N·R, d)` table of per-type messages.
    pub fn typed_source_index(&self) -> EdgeIndex {
        let r = self.num_edge_types;
        let rows = self
            .src()
            .iter()
            .zip(self.edge_type.iter())
            .map(|(&s, &t)| s * r + t)
            .collect();
        EdgeIndex::new(rows, self.num_nodes * r).expect("typed rows in range")
    }
    /// Reorders per-edge values given in build order into CSR order.
    pub fn edge_values_in_csr_order(&self, values: &[f64]) -> Result<Vec<f64>> {
        if values.len() != self.num_edges() {
            return Err(invalid!(
                "{} edge values for a graph with {} edges",
                values.len(),
                self.num_edges()
            ));
        }
        Ok(self.orig.iter().map(|&k| values[k]).collect())
    }
    /// The GCN weights `1/√(deg(i)·deg(j))` of every edge (degrees = in-degrees, which are the
    /// degrees of `Â = A + I` when the graph is symmetric and has its self loops).
    pub fn gcn_norm(&self) -> &[f64] {
        self.gcn_norm.get_or_init(|| {
            let deg = self.in_degrees();
            (0..self.num_edges())
                .map(|e| 1.0 / ((deg[self.dst[e]] * deg[self.src()[e]]) as f64).sqrt())
                .collect()
        })
    }
    /// Hop distance from every node `j` to `target` along directed edges `j → … → target`
    /// (`None` if unreachable): after L rounds of message passing, exactly the nodes with
    /// distance ≤ L can influence `target`.
    pub fn hop_distances_to(&self, target: usize) -> Result<Vec<Option<usize>>> {
        if target >= self.num_nodes {
            return Err(invalid!(
                "node {target} out of range for {} nodes",
                self.num_nodes
            ));
        }
        let mut dist = vec![None; self.num_nodes];
        dist[target] = Some(0);
        let mut q = VecDeque::from([target]);
        while let Some(i) = q.pop_front() {
            let di = dist[i].unwrap_or(0);
            for e in self.in_edges(i) {
                let j = self.src()[e];
                if dist[j].is_none() {
                    dist[j] = Some(di + 1);
                    q.push_back(j);
                }
            }
        }
        Ok(dist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_is_sorted_by_destination_and_keeps_build_positions() {
        let g = Graph::from_edges(4, &[(2, 0), (1, 3), (0, 1), (3, 0), (1, 0)]).unwrap();
        assert_eq!(g.indptr(), &[0, 3, 4, 4, 5]);
        assert_eq!(g.src(), &[1, 2, 3, 0, 1]);
        assert_eq!(g.dst(), &[0, 0, 0, 1, 3]);
        assert_eq!(g.original_positions(), &[4, 0, 3, 2, 1]);
        assert_eq!(g.in_degrees(), vec![3, 1, 0, 1]);
        assert_eq!(g.out_degrees(), vec![1, 2, 1, 1]);
        let w = g
            .edge_values_in_csr_order(&[0.1, 0.2, 0.3, 0.4, 0.5])
            .unwrap();
        assert_eq!(w, vec![0.5, 0.1, 0.4, 0.3, 0.2]);
        let (ptr, edges) = g.source_index().groups();
        assert_eq!(ptr, &[0, 1, 3, 4, 5]);
        assert_eq!(edges, &[3, 0, 4, 1, 2]);
    }

    #[test]
    fn builders_count_edges() {
        assert_eq!(Graph::complete(4, false).num_edges(), 12);
        assert_eq!(Graph::complete(4, true).num_edges(), 16);
        let g = Graph::from_edges(3, &[(0, 1), (1, 2), (2, 1)]).unwrap();
        let s = g.symmetric();
        assert_eq!(s.num_edges(), 4);
        let l = s.with_self_loops();
        assert_eq!(l.num_edges(), 7);
        assert_eq!(l.with_self_loops().num_edges(), 7);
        assert_eq!(Graph::chain(5).num_edges(), 8);
        let u = Graph::disjoint_union(&[Graph::complete(2, true), Graph::chain(3)]).unwrap();
        assert_eq!(u.num_nodes(), 5);
        assert_eq!(u.num_edges(), 8);
        assert_eq!(&u.src()[4..], &[3, 2, 4, 3]);
    }

    #[test]
    fn bad_edges_are_errors() {
        let e = Graph::from_edges(3, &[(0, 1), (0, 3)]).unwrap_err();
        assert!(e.to_string().contains("edge 1 (0 -> 3)"), "{e}");
        assert!(Graph::from_typed_edges(3, &[(0, 1, 2)], 2).is_err());
        assert!(Graph::chain(3).hop_distances_to(3).is_err());
    }

    #[test]
    fn hop_distances_follow_incoming_edges() {
        let d = Graph::chain(5).hop_distances_to(1).unwrap();
        assert_eq!(d, vec![Some(1), Some(0), Some(1), Some(2), Some(3)]);
        let g = Graph::from_edges(3, &[(0, 1), (1, 2)]).unwrap();
        assert_eq!(
            g.hop_distances_to(2).unwrap(),
            vec![Some(2), Some(1), Some(0)]
        );
        assert_eq!(g.hop_distances_to(0).unwrap(), vec![Some(0), None, None]);
    }
}
