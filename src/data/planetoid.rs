//! Node-classification data sets: the TSV conversion of the Planetoid graphs
//! (`../shared/data/cora`, `citeseer`: `edges.tsv`, `features.tsv`, `labels.tsv`, `split.tsv`),
//! the original LINQS `*.content` / `*.cites` files, and a built-in contextual stochastic block
//! model so that training always has something to run on. Every parse error names the file and
//! the 1-based line.

use super::{utf8_text, MAX_CLASSES};
use crate::error::{NablaError, Result};
use crate::graph::Graph;
use crate::init::Rng;
use crate::invalid;
use crate::io::excerpt;
use crate::nn::sparse_linear::SparseRows;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A graph with sparse node features, labels and a train/val/test split.
#[derive(Clone, Debug)]
pub struct NodeDataset {
    pub name: String,
    /// Directed edges as given (symmetric for the Planetoid graphs), without self loops added.
    pub graph: Graph,
    /// (N, F) sparse features.
    pub features: SparseRows,
    /// Class of each node, `None` if unlabelled.
    pub labels: Vec<Option<usize>>,
    pub num_classes: usize,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// The most feature columns a node data set may have (2^24): an index in a file is checked
/// against it (and against the declared or inferred width) before any row is allocated, so
/// `0\t1000000000000` is a line error, not an 8 TB allocation.
pub const MAX_FEATURES: usize = 1 << 24;

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| NablaError::io(path, e))
}

fn line_err(path: &Path, line: usize, msg: impl std::fmt::Display) -> NablaError {
    NablaError::format(path, format!("line {line}: {msg}"))
}

/// The four files of a Planetoid TSV folder, as bytes (see [`NodeDataset::parse_tsv`]).
#[derive(Clone, Copy, Debug)]
pub struct TsvFiles<'a> {
    pub features: &'a [u8],
    pub labels: &'a [u8],
    pub edges: &'a [u8],
    pub split: &'a [u8],
}

/// Non-empty lines with their 1-based numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty())
}

fn two_fields<'a>(path: &Path, ln: usize, l: &'a str) -> Result<(&'a str, &'a str)> {
    let mut it = l.split('\t');
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), None) => Ok((a, b)),
        _ => Err(line_err(
            path,
            ln,
            format!("expected 2 tab-separated fields, got {:?}", excerpt(l)),
        )),
    }
}

fn parse_node(path: &Path, ln: usize, s: &str, n: Option<usize>) -> Result<usize> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| line_err(path, ln, format!("{:?} is not a node id", excerpt(s))))?;
    if let Some(n) = n {
        if v >= n {
            return Err(line_err(
                path,
                ln,
                format!("node id {v} out of range for {n} nodes"),
            ));
        }
    }
    Ok(v)
}

impl NodeDataset {
    /// Loads `DIR/{features,labels,edges,split}.tsv` (format in `../shared/data/README.md`).
    /// The node count comes from `features.tsv`; every other file is checked against it.
    pub fn load_tsv_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let features = read(&dir.join("features.tsv"))?;
        let labels = read(&dir.join("labels.tsv"))?;
        let edges = read(&dir.join("edges.tsv"))?;
        let split = read(&dir.join("split.tsv"))?;
        Self::parse_tsv(
            dir,
            TsvFiles {
                features: &features,
                labels: &labels,
                edges: &edges,
                split: &split,
            },
        )
    }

    /// The data set of a Planetoid TSV folder's files given as bytes (see
    /// [`NodeDataset::load_tsv_dir`]); errors name `dir/<file>` and the line. Every id and
    /// index is checked against the node count, [`MAX_FEATURES`] and [`MAX_CLASSES`] as it is
    /// read.
    pub fn parse_tsv(dir: &Path, files: TsvFiles<'_>) -> Result<Self> {
        let p = |f: &str| -> PathBuf { dir.join(f) };

        let fpath = p("features.tsv");
        let text = utf8_text(files.features, &fpath)?;
        let mut rows: Vec<Vec<usize>> = Vec::new();
        for (ln, l) in lines(text) {
            let (node, feats) = two_fields(&fpath, ln, l)?;
            let node = parse_node(&fpath, ln, node, None)?;
            if node != rows.len() {
                return Err(line_err(
                    &fpath,
                    ln,
                    format!(
                        "expected node {} (one line per node, in order), got {node}",
                        rows.len()
                    ),
                ));
            }
            let mut idx = Vec::new();
            for f in feats.split(',').filter(|f| !f.is_empty()) {
                let i: usize = f.trim().parse().map_err(|_| {
                    line_err(
                        &fpath,
                        ln,
                        format!("{:?} is not a feature index", excerpt(f)),
                    )
                })?;
                if i >= MAX_FEATURES {
                    return Err(line_err(
                        &fpath,
                        ln,
                        format!(
                            "feature index {i} is not below {MAX_FEATURES} (2^24, the most feature columns a data set may have)"
                        ),
                    ));
                }
                if idx.last().is_some_and(|&last| i <= last) {
                    return Err(line_err(
                        &fpath,
                        ln,
                        format!(
                            "feature indices must ascend, {i} follows {}",
                            idx.last().unwrap()
                        ),
                    ));
                }
                idx.push(i);
            }
            rows.push(idx);
        }
        let n = rows.len();
        if n == 0 {
            return Err(NablaError::format(&fpath, "no nodes"));
        }
        let width = rows
            .iter()
            .filter_map(|r| r.last())
            .max()
            .map_or(0, |m| m + 1);
        let features = SparseRows::binary(width, &rows)?;

        let lpath = p("labels.tsv");
        let text = utf8_text(files.labels, &lpath)?;
        let mut labels = Vec::with_capacity(n);
        let mut label_lines = Vec::with_capacity(n);
        for (ln, l) in lines(text) {
            label_lines.push(ln);
            let (node, c) = two_fields(&lpath, ln, l)?;
            let node = parse_node(&lpath, ln, node, Some(n))?;
            if node != labels.len() {
                return Err(line_err(
                    &lpath,
                    ln,
                    format!(
                        "expected node {} (one line per node, in order), got {node}",
                        labels.len()
                    ),
                ));
            }
            let c: i64 = c
                .trim()
                .parse()
                .map_err(|_| line_err(&lpath, ln, format!("{:?} is not a class id", excerpt(c))))?;
            labels.push(match c {
                -1 => None,
                c if c >= MAX_CLASSES as i64 => {
                    return Err(line_err(
                        &lpath,
                        ln,
                        format!(
                            "class {c} of node {node} is not below {MAX_CLASSES} (2^16, the most classes a data set may have)"
                        ),
                    ))
                }
                c if c >= 0 => Some(c as usize),
                c => return Err(line_err(&lpath, ln, format!("class {c} is negative"))),
            });
        }
        if labels.len() != n {
            return Err(NablaError::format(
                &lpath,
                format!(
                    "{} labels for {n} nodes in {}",
                    labels.len(),
                    fpath.display()
                ),
            ));
        }
        // The file does not say how many classes there are: K distinct ids must be 0..K-1.
        // Anything else widens the model's head with classes no node has — a class id of 10^12
        // would ask for a head of 10^12 outputs.
        let k = labels
            .iter()
            .flatten()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if let Some((node, c)) = labels
            .iter()
            .enumerate()
            .find_map(|(i, l)| l.filter(|&c| c >= k).map(|c| (i, c)))
        {
            return Err(line_err(
                &lpath,
                label_lines[node],
                format!(
                    "class {c} of node {node} is outside the classes 0..{}: the {k} distinct class ids must be 0..{} (0-based, every class with at least one node)",
                    k.saturating_sub(1),
                    k.saturating_sub(1)
                ),
            ));
        }

        let epath = p("edges.tsv");
        let text = utf8_text(files.edges, &epath)?;
        let mut edges = Vec::new();
        for (ln, l) in lines(text) {
            let (s, d) = two_fields(&epath, ln, l)?;
            edges.push((
                parse_node(&epath, ln, s, Some(n))?,
                parse_node(&epath, ln, d, Some(n))?,
            ));
        }
        let graph = Graph::from_edges(n, &edges)?;

        let spath = p("split.tsv");
        let text = utf8_text(files.split, &spath)?;
        let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
        for (ln, l) in lines(text) {
            let (node, which) = two_fields(&spath, ln, l)?;
            let node = parse_node(&spath, ln, node, Some(n))?;
            match which.trim() {
                "train" => train.push(node),
                "val" => val.push(node),
                "test" => test.push(node),
                other => {
                    return Err(line_err(
                        &spath,
                        ln,
                        format!("split must be train, val or test, got {:?}", excerpt(other)),
                    ))
                }
            }
            if labels[node].is_none() {
                return Err(line_err(&spath, ln, format!("node {node} has no label")));
            }
        }
        let name = dir
            .file_name()
            .map_or("graph".into(), |s| s.to_string_lossy().into_owned());
        Self::finish(name, graph, features, labels, train, val, test)
    }

    /// Loads the LINQS format: `content` lines `<paper_id> <w_1> … <w_F> <class_label>` and
    /// `cites` lines `<cited_id> <citing_id>` (whitespace-separated). Paper ids become nodes
    /// 0.. in file order, class names classes 0.. in sorted order; the citation graph is made
    /// symmetric (self-citations dropped). The split is the Planetoid recipe drawn with `seed`:
    /// 20 training nodes per class, then 500 validation and 1000 test nodes.
    pub fn load_linqs(
        content: impl AsRef<Path>,
        cites: impl AsRef<Path>,
        seed: u64,
    ) -> Result<Self> {
        let (cpath, epath) = (content.as_ref(), cites.as_ref());
        let content = read(cpath)?;
        let cites = read(epath)?;
        Self::parse_linqs((&content, cpath), (&cites, epath), seed)
    }

    /// The data set of LINQS `content` and `cites` files given as bytes, each with the path
    /// that names it in errors (see [`NodeDataset::load_linqs`]).
    pub fn parse_linqs(
        (content, cpath): (&[u8], &Path),
        (cites, epath): (&[u8], &Path),
        seed: u64,
    ) -> Result<Self> {
        let text = utf8_text(content, cpath)?;
        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut rows = Vec::new();
        let mut class_names = Vec::new();
        let mut width = None;
        for (ln, l) in lines(text) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 2 {
                return Err(line_err(
                    cpath,
                    ln,
                    "expected <paper_id> <features…> <class>",
                ));
            }
            let w = f.len() - 2;
            if w > MAX_FEATURES {
                return Err(line_err(
                    cpath,
                    ln,
                    format!(
                        "{w} features, more than {MAX_FEATURES} (2^24, the most feature columns a data set may have)"
                    ),
                ));
            }
            match width {
                None => width = Some(w),
                Some(w0) if w0 != w => {
                    return Err(line_err(
                        cpath,
                        ln,
                        format!("{w} features, but the first line has {w0}"),
                    ))
                }
                _ => {}
            }
            if ids.insert(f[0].to_string(), rows.len()).is_some() {
                return Err(line_err(
                    cpath,
                    ln,
                    format!("paper id {:?} appears twice", excerpt(f[0])),
                ));
            }
            let mut idx = Vec::new();
            for (k, v) in f[1..f.len() - 1].iter().enumerate() {
                match *v {
                    "0" | "0.0" => {}
                    "1" | "1.0" => idx.push(k),
                    other => {
                        return Err(line_err(
                            cpath,
                            ln,
                            format!("feature {k} is {:?}, expected 0 or 1", excerpt(other)),
                        ))
                    }
                }
            }
            rows.push(idx);
            class_names.push(f[f.len() - 1].to_string());
        }
        let n = rows.len();
        if n == 0 {
            return Err(NablaError::format(cpath, "no papers"));
        }
        let mut classes: Vec<&String> = class_names.iter().collect();
        classes.sort();
        classes.dedup();
        let labels: Vec<Option<usize>> = class_names
            .iter()
            .map(|c| classes.binary_search(&c).ok())
            .collect();
        let num_classes = classes.len();
        if num_classes > MAX_CLASSES {
            return Err(NablaError::format(
                cpath,
                format!(
                    "{num_classes} distinct class labels, more than {MAX_CLASSES} (2^16, the most classes a data set may have)"
                ),
            ));
        }
        let features = SparseRows::binary(width.unwrap_or(0), &rows)?;

        let text = utf8_text(cites, epath)?;
        let mut edges = Vec::new();
        for (ln, l) in lines(text) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 2 {
                return Err(line_err(
                    epath,
                    ln,
                    format!("expected <cited> <citing>, got {:?}", excerpt(l)),
                ));
            }
            let node = |s: &str| {
                ids.get(s).copied().ok_or_else(|| {
                    line_err(
                        epath,
                        ln,
                        format!("paper id {:?} is not in {}", excerpt(s), cpath.display()),
                    )
                })
            };
            let (cited, citing) = (node(f[0])?, node(f[1])?);
            if cited != citing {
                edges.push((citing, cited));
            }
        }
        let graph = Graph::from_edges(n, &edges)?.symmetric();

        // Planetoid-style split.
        let mut rng = Rng::new(seed);
        let perm = rng.permutation(n);
        let mut per_class = vec![0usize; num_classes];
        let (mut train, mut rest) = (Vec::new(), Vec::new());
        for &i in &perm {
            let c = labels[i].unwrap_or(0);
            if per_class[c] < 20 {
                per_class[c] += 1;
                train.push(i);
            } else {
                rest.push(i);
            }
        }
        let nv = rest.len().min(500);
        let val = rest[..nv].to_vec();
        let test = rest[nv..rest.len().min(nv + 1000)].to_vec();
        let name = cpath
            .file_stem()
            .map_or("linqs".into(), |s| s.to_string_lossy().into_owned());
        let _ = num_classes;
        Self::finish(name, graph, features, labels, train, val, test)
    }

    /// A contextual stochastic block model: `classes` blocks of `n/classes` nodes, undirected
    /// edges with probability `p_in` inside a block and `p_out` across, and binary features
    /// where each class has its own set of `width/classes` "topic" words drawn with
    /// probability `q_topic` (others with `q_noise`). 20 train nodes per class, 500 val, 1000 test.
    pub fn csbm(n: usize, classes: usize, width: usize, seed: u64) -> Result<Self> {
        if classes < 2 || n < 60 * classes || width < classes {
            return Err(invalid!(
                "csbm needs classes >= 2, n >= 60·classes and width >= classes (got n={n}, classes={classes}, width={width})"
            ));
        }
        let mut rng = Rng::new(seed);
        let labels: Vec<Option<usize>> = (0..n).map(|i| Some(i * classes / n)).collect();
        // Mean degree ~4 with 80% of the edges inside a block (homophily like Cora's).
        let deg = 4.0;
        let p_in = 0.8 * deg / (n as f64 / classes as f64);
        let p_out = 0.2 * deg / (n as f64 - n as f64 / classes as f64);
        let mut edges = Vec::new();
        for i in 0..n {
            for j in i + 1..n {
                let p = if labels[i] == labels[j] { p_in } else { p_out };
                if rng.bernoulli(p) {
                    edges.push((i, j));
                }
            }
        }
        let graph = Graph::from_edges(n, &edges)?.symmetric();
        let topic = width / classes;
        let rows: Vec<Vec<usize>> = (0..n)
            .map(|i| {
                let c = labels[i].unwrap_or(0);
                (0..width)
                    .filter(|&f| {
                        let own = f / topic == c;
                        rng.bernoulli(if own { 0.06 } else { 0.01 })
                    })
                    .collect()
            })
            .collect();
        let features = SparseRows::binary(width, &rows)?;
        let perm = rng.permutation(n);
        let mut per_class = vec![0usize; classes];
        let (mut train, mut rest) = (Vec::new(), Vec::new());
        for &i in &perm {
            let c = labels[i].unwrap_or(0);
            if per_class[c] < 20 {
                per_class[c] += 1;
                train.push(i);
            } else {
                rest.push(i);
            }
        }
        let nv = rest.len().min(500);
        let val = rest[..nv].to_vec();
        let test = rest[nv..rest.len().min(nv + 1000)].to_vec();
        Self::finish("csbm".into(), graph, features, labels, train, val, test)
    }

    /// A random graph of a given size for benchmarks: `undirected` distinct random pairs stored
    /// both ways, binary features at `density`, uniform random labels; split as Planetoid
    /// (first `20·classes` nodes train, next 500 val, last 1000 test).
    pub fn random(
        n: usize,
        undirected: usize,
        width: usize,
        density: f64,
        classes: usize,
        seed: u64,
    ) -> Result<Self> {
        if n < 20 * classes + 1500
            || undirected > n * (n - 1) / 2
            || classes == 0
            || !(0.0..=1.0).contains(&density)
        {
            return Err(invalid!(
                "random graph needs n >= 20·classes + 1500, at most n(n-1)/2 pairs and density in [0, 1] (n={n}, pairs={undirected}, classes={classes}, density={density})"
            ));
        }
        let mut rng = Rng::new(seed);
        let mut seen = std::collections::HashSet::new();
        let mut edges = Vec::with_capacity(2 * undirected);
        while seen.len() < undirected {
            let (a, b) = (rng.below(n), rng.below(n));
            if a != b && seen.insert((a.min(b), a.max(b))) {
                edges.push((a, b));
                edges.push((b, a));
            }
        }
        let graph = Graph::from_edges(n, &edges)?;
        let rows: Vec<Vec<usize>> = (0..n)
            .map(|_| (0..width).filter(|_| rng.bernoulli(density)).collect())
            .collect();
        let features = SparseRows::binary(width, &rows)?;
        let labels = (0..n).map(|_| Some(rng.below(classes))).collect();
        let train: Vec<usize> = (0..20 * classes).collect();
        let val: Vec<usize> = (20 * classes..20 * classes + 500).collect();
        let test: Vec<usize> = (n - 1000..n).collect();
        Self::finish("random".into(), graph, features, labels, train, val, test)
    }

    fn finish(
        name: String,
        graph: Graph,
        features: SparseRows,
        labels: Vec<Option<usize>>,
        train: Vec<usize>,
        val: Vec<usize>,
        test: Vec<usize>,
    ) -> Result<Self> {
        let num_classes = labels.iter().flatten().max().map_or(0, |m| m + 1);
        if train.is_empty() {
            return Err(invalid!("data set {name} has no training nodes"));
        }
        Ok(NodeDataset {
            name,
            graph,
            features,
            labels,
            num_classes,
            train,
            val,
            test,
        })
    }

    pub fn num_nodes(&self) -> usize {
        self.graph.num_nodes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn tiny_tsv(dir: &Path) {
        write(dir, "features.tsv", "0\t0,2\n1\t1\n2\t\n3\t2\n");
        write(dir, "labels.tsv", "0\t0\n1\t1\n2\t1\n3\t0\n");
        write(dir, "edges.tsv", "0\t1\n1\t0\n1\t2\n2\t1\n2\t3\n3\t2\n");
        write(dir, "split.tsv", "0\ttrain\n1\ttrain\n2\tval\n3\ttest\n");
    }

    #[test]
    fn tsv_loader_reads_a_small_graph() {
        let d = tempfile::tempdir().unwrap();
        tiny_tsv(d.path());
        let ds = NodeDataset::load_tsv_dir(d.path()).unwrap();
        assert_eq!(ds.num_nodes(), 4);
        assert_eq!(ds.graph.num_edges(), 6);
        assert_eq!(ds.features.cols(), 3);
        assert_eq!(ds.features.nnz(), 4);
        assert_eq!(ds.num_classes, 2);
        assert_eq!(
            (ds.train.clone(), ds.val.clone(), ds.test.clone()),
            (vec![0, 1], vec![2], vec![3])
        );
    }

    #[test]
    fn tsv_loader_errors_name_file_and_line() {
        let cases: [(&str, &str, &str); 10] = [
            // A class id of 10^12 is refused on its line, before it sizes anything.
            (
                "labels.tsv",
                "0\t0\n1\t1000000000000\n2\t0\n3\t-1\n",
                "labels.tsv: line 2: class 1000000000000 of node 1 is not below 65536",
            ),
            // Two classes occur (0 and 5): ids must be 0..1.
            (
                "labels.tsv",
                "0\t0\n1\t5\n2\t0\n3\t-1\n",
                "labels.tsv: line 2: class 5 of node 1 is outside the classes 0..1",
            ),
            // A feature index of 10^12 would be an 8 TB allocation in SparseRows::new.
            (
                "features.tsv",
                "0\t1000000000000\n1\t1\n2\t\n3\t2\n",
                "features.tsv: line 1: feature index 1000000000000 is not below 16777216",
            ),
            (
                "features.tsv",
                "0\t0\n1\t16777216\n2\t\n3\t2\n",
                "features.tsv: line 2: feature index 16777216 is not below 16777216",
            ),
            (
                "labels.tsv",
                "0\t0\n1\t2\n2\t2\n3\t0\n",
                "labels.tsv: line 2: class 2 of node 1 is outside the classes 0..1",
            ),
            (
                "edges.tsv",
                "0\t1\n1\t0\n1\t9\n",
                "edges.tsv: line 3: node id 9 out of range",
            ),
            (
                "edges.tsv",
                "0\t1\n1 0\n",
                "edges.tsv: line 2: expected 2 tab-separated",
            ),
            (
                "split.tsv",
                "0\ttrain\n7\tval\n",
                "split.tsv: line 2: node id 7 out of range",
            ),
            (
                "split.tsv",
                "0\ttrain\n1\tdev\n",
                "split.tsv: line 2: split must be",
            ),
            (
                "features.tsv",
                "0\t0,2\n1\t1,x\n2\t\n3\t2\n",
                "features.tsv: line 2: \"x\" is not a feature index",
            ),
        ];
        for (file, text, want) in cases {
            let d = tempfile::tempdir().unwrap();
            tiny_tsv(d.path());
            write(d.path(), file, text);
            let e = NodeDataset::load_tsv_dir(d.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{file}: got {e:?}, want {want:?}");
        }
        let d = tempfile::tempdir().unwrap();
        let e = NodeDataset::load_tsv_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("features.tsv"), "{e}");
    }

    #[test]
    fn linqs_loader_reads_and_checks() {
        let d = tempfile::tempdir().unwrap();
        let mut content = String::new();
        for i in 0..50 {
            let c = if i % 2 == 0 {
                "Theory"
            } else {
                "Neural_Networks"
            };
            content += &format!("p{i}\t{}\t{}\t0\t{c}\n", i % 2, (i + 1) % 2);
        }
        write(d.path(), "g.content", &content);
        let mut cites = String::new();
        for i in 1..50 {
            cites += &format!("p{}\tp{i}\n", i - 1);
        }
        cites += "p3\tp3\n";
        write(d.path(), "g.cites", &cites);
        let ds = NodeDataset::load_linqs(d.path().join("g.content"), d.path().join("g.cites"), 0)
            .unwrap();
        assert_eq!(ds.num_nodes(), 50);
        assert_eq!(ds.graph.num_edges(), 98);
        assert_eq!(ds.features.cols(), 3);
        assert_eq!(ds.num_classes, 2);
        // Classes in sorted name order: Neural_Networks = 0, Theory = 1.
        assert_eq!(ds.labels[0], Some(1));
        assert_eq!(ds.train.len(), 40);
        assert_eq!(ds.val.len(), 10);

        write(d.path(), "bad.cites", "p0\tp1\np1\tq7\n");
        let e = NodeDataset::load_linqs(d.path().join("g.content"), d.path().join("bad.cites"), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.cites: line 2") && e.contains("\"q7\""),
            "{e}"
        );
        write(d.path(), "bad.content", "a\t1\t0\tX\nb\t1\tY\n");
        let e = NodeDataset::load_linqs(d.path().join("bad.content"), d.path().join("g.cites"), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.content: line 2: 1 features, but the first line has 2"),
            "{e}"
        );
    }

    /// An error about a line of 1 MB quotes 200 bytes of it, in every file of both formats.
    #[test]
    fn errors_quote_at_most_200_bytes_of_a_line() {
        let long = "z".repeat(1 << 20);
        let d = tempfile::tempdir().unwrap();
        tiny_tsv(d.path());
        write(d.path(), "edges.tsv", &format!("0\t1\n{long}\n"));
        let e = NodeDataset::load_tsv_dir(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("edges.tsv: line 2: expected 2 tab-separated fields")
                && e.contains("… (1048576 bytes)")
                && e.len() < 400 + d.path().as_os_str().len(),
            "{} bytes: {}",
            e.len(),
            &e[..300.min(e.len())]
        );
        write(d.path(), "edges.tsv", &format!("0\t{long}\n"));
        let e = NodeDataset::load_tsv_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("is not a node id") && e.len() < 400 + d.path().as_os_str().len());
        let cites = d.path().join("g.cites");
        write(d.path(), "g.content", "a\t1\tX\nb\t0\tY\n");
        write(d.path(), "g.cites", &format!("a\t{long}\n"));
        let e = NodeDataset::load_linqs(d.path().join("g.content"), &cites, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("g.cites: line 1: paper id \"zzz")
                && e.len() < 500 + 2 * d.path().as_os_str().len(),
            "{} bytes",
            e.len()
        );
        std::fs::write(d.path().join("edges.tsv"), b"0\t1\n\xff\t0\n").unwrap();
        let e = NodeDataset::load_tsv_dir(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("edges.tsv: line 2: not UTF-8 text: byte 0xff at offset 4"),
            "{e}"
        );
        // A LINQS feature that is neither 0 nor 1.
        let parsed = NodeDataset::parse_linqs(
            (format!("a\t{long}\tX\n").as_bytes(), Path::new("c.content")),
            (b"", Path::new("c.cites")),
            0,
        );
        let e = parsed.unwrap_err().to_string();
        assert!(
            e.starts_with("format error in c.content: line 1: feature 0 is \"zzz") && e.len() < 400,
            "{} bytes",
            e.len()
        );
    }

    #[test]
    fn csbm_is_reproducible() {
        let a = NodeDataset::csbm(600, 3, 60, 1).unwrap();
        let b = NodeDataset::csbm(600, 3, 60, 1).unwrap();
        assert_eq!(a.graph.src(), b.graph.src());
        assert_eq!(a.train.len(), 60);
        assert!(NodeDataset::csbm(10, 3, 60, 1).is_err());
    }
}
