//! The two embedding panels of Dosovitskiy et al. (2020), Figure 7 (the third, mean attention
//! distance, is [`super::vit_attention`]):
//!
//! - **Left — principal components of the patch-embedding filters.** `patch_embed.proj.weight`
//!   `(D, C, P, P)` is D linear filters of `K = C·P·P` values. With `X` the `(D, K)` filter
//!   matrix centred on its mean filter, the thin SVD `X = U S Vᵀ` gives the principal
//!   components as the rows of `Vᵀ` (unit filters, orthogonal) and their variances
//!   `s_k² / (D − 1)`; each component is drawn as a `P × P` image per channel. PCA through
//!   `faer`'s SVD: the eigenvectors of `XᵀX` would square the condition number.
//! - **Centre — position-embedding similarity.** With `p_i` the position embedding of patch `i`
//!   (class-token entry left out), `sim(i, j) = p_i·p_j / (‖p_i‖ ‖p_j‖)`; tile `i` of the figure
//!   is row `i` of that matrix drawn on the patch grid, and the tiles sit on the same grid, so a
//!   model that has learnt the 2-D layout shows a bright spot moving with the tile.

use crate::error::{NablaError, Result};
use crate::invalid;
use crate::models::vit::VitConfig;
use crate::plot::{write_tiles, TileScale, Tiles};
use crate::tensor::{Element, Tensor};
use crate::ParamStore;
use faer::Mat;
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Principal components of a set of filters.
#[derive(Clone, Debug, Serialize)]
pub struct FilterPca {
    /// Filters (`D`) and values per filter (`K = C·P·P`).
    pub filters: usize,
    pub values: usize,
    /// `(C, P, P)`: how a component is drawn.
    pub channels: usize,
    pub patch: usize,
    /// Unit-norm components, largest variance first, each of `K` values in `(C, P, P)` order;
    /// the sign makes the entry of largest magnitude positive (SVD signs are arbitrary).
    pub components: Vec<Vec<f64>>,
    /// Variance of the filters along each component: `s_k² / (D − 1)`.
    pub explained_variance: Vec<f64>,
    /// Each variance over the total variance of the filters (all components, not just those kept).
    pub explained_variance_ratio: Vec<f64>,
    /// Total variance: the trace of the filters' covariance.
    pub total_variance: f64,
}

/// The first `keep` principal components of `weight` `(D, C, P, P)` (fewer when the centred
/// filters have lower rank than that: at most `min(D − 1, K)`).
pub fn patch_embed_pca<T: Element>(weight: &Tensor<T>, keep: usize) -> Result<FilterPca> {
    let s = weight.shape();
    if s.len() != 4 || s[2] != s[3] || s.contains(&0) {
        return Err(invalid!(
            "patch_embed.proj.weight must be (D, C, P, P), got {s:?}"
        ));
    }
    let (d, c, p) = (s[0], s[1], s[2]);
    if d < 2 {
        return Err(invalid!(
            "PCA of the patch-embedding filters needs at least 2 filters, got {d}"
        ));
    }
    let k = c * p * p;
    let w = weight.data();
    let mean: Vec<f64> = (0..k)
        .map(|j| (0..d).map(|i| w[i * k + j].as_f64()).sum::<f64>() / d as f64)
        .collect();
    // X: (D, K), centred.
    let x = Mat::<f64>::from_fn(d, k, |i, j| w[i * k + j].as_f64() - mean[j]);
    let svd = x
        .thin_svd()
        .map_err(|e| NablaError::Other(format!("PCA of the patch embedding: SVD failed: {e:?}")))?;
    let sv = svd.S().column_vector();
    let v = svd.V(); // (K, min(D, K)): the components are its columns
    let dof = (d - 1) as f64;
    let all: Vec<f64> = (0..sv.nrows()).map(|i| sv[i] * sv[i] / dof).collect();
    let total: f64 = all.iter().sum();
    // Rank of the centred filters: directions with a variance below round-off are no components.
    let tiny = all.first().copied().unwrap_or(0.0) * 1e-12;
    let n = all.iter().take(keep).take_while(|&&e| e > tiny).count();
    let components = (0..n)
        .map(|col| {
            let mut comp: Vec<f64> = (0..k).map(|j| v[(j, col)]).collect();
            let big = comp
                .iter()
                .copied()
                .max_by(|a, b| a.abs().total_cmp(&b.abs()))
                .unwrap_or(0.0);
            if big < 0.0 {
                comp.iter_mut().for_each(|x| *x = -*x);
            }
            comp
        })
        .collect();
    Ok(FilterPca {
        filters: d,
        values: k,
        channels: c,
        patch: p,
        components,
        explained_variance: all[..n].to_vec(),
        explained_variance_ratio: all[..n]
            .iter()
            .map(|e| if total > 0.0 { e / total } else { 0.0 })
            .collect(),
        total_variance: total,
    })
}

/// Cosine similarity of every patch's position embedding with every other, `(N, N)` row-major,
/// from `pos_embed` `(1, prefix + N, D)` (`prefix` = 1: the class token's entry comes first).
pub fn pos_embed_similarity<T: Element>(pos: &Tensor<T>, prefix: usize) -> Result<Vec<f64>> {
    let s = pos.shape();
    if s.len() != 3 || s[0] != 1 || s[1] <= prefix || s[2] == 0 {
        return Err(invalid!(
            "pos_embed must be (1, {prefix} + N, D) with N, D > 0, got {s:?}"
        ));
    }
    let (n, d) = (s[1] - prefix, s[2]);
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let r = &pos.data()[(prefix + i) * d..(prefix + i + 1) * d];
            let v: Vec<f64> = r.iter().map(|x| x.as_f64()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            // A zero embedding has no direction: its similarity is 0 with everything.
            v.into_iter()
                .map(|x| if norm > 0.0 { x / norm } else { 0.0 })
                .collect()
        })
        .collect();
    let mut sim = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            sim[i * n + j] = rows[i].iter().zip(&rows[j]).map(|(a, b)| a * b).sum();
        }
    }
    Ok(sim)
}

/// Figure 7 (left): the components as `P × P` tiles (one per channel side by side), seven per
/// row as in the paper, each on its own symmetric scale (a component's sign is arbitrary).
pub fn plot_pca(path: &Path, pca: &FilterPca) -> Result<()> {
    let p = pca.patch;
    let pp = p * p;
    // Channels side by side: a tile is P rows × C·P columns.
    let data: Vec<Vec<f64>> = pca
        .components
        .iter()
        .map(|comp| {
            let mut t = vec![0.0; pca.channels * pp];
            for ch in 0..pca.channels {
                for y in 0..p {
                    for x in 0..p {
                        t[y * pca.channels * p + ch * p + x] = comp[ch * pp + y * p + x];
                    }
                }
            }
            t
        })
        .collect();
    let captions = pca
        .explained_variance_ratio
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{} · {:.1}%", i + 1, 100.0 * r))
        .collect();
    write_tiles(
        path,
        &Tiles {
            title: format!(
                "Patch-embedding filters: first {} principal components ({}×{}, {} channel{}; % of variance)",
                pca.components.len(),
                p,
                p,
                pca.channels,
                if pca.channels == 1 { "" } else { "s side by side" }
            ),
            tile: (p, pca.channels * p),
            data,
            captions,
            columns: 7,
            scale: TileScale::SymmetricPerTile,
            zoom: if p <= 8 { 8 } else { 4 },
            rows_label: String::new(),
            columns_label: String::new(),
            colour_label: "component value (each tile on its own scale)".into(),
        },
    )
}

/// Figure 7 (centre): tile `(r, c)` is the similarity of patch `(r, c)`'s position embedding
/// with every patch, on the `grid × grid` layout; one scale, −1 to 1.
pub fn plot_pos_similarity(path: &Path, sim: &[f64], grid: usize) -> Result<()> {
    let n = grid * grid;
    if sim.len() != n * n || grid == 0 {
        return Err(invalid!(
            "position similarity has {} values, not ({n}, {n}) for a {grid}×{grid} grid",
            sim.len()
        ));
    }
    write_tiles(
        path,
        &Tiles {
            title: format!("Position-embedding similarity ({grid}×{grid} patches)"),
            tile: (grid, grid),
            data: sim.chunks(n).map(<[f64]>::to_vec).collect(),
            captions: Vec::new(),
            columns: grid,
            scale: TileScale::Fixed(-1.0, 1.0),
            zoom: (48 / grid).clamp(3, 12),
            rows_label: "input patch row".into(),
            columns_label: "input patch column".into(),
            colour_label: "cosine similarity".into(),
        },
    )
}

/// Mean similarity of the pairs of distinct patches at each grid distance (in patches,
/// Euclidean), nearest first: `(distance, mean similarity, pairs)`. A position embedding that
/// encodes the 2-D layout gives a falling sequence.
pub fn similarity_by_distance(sim: &[f64], grid: usize) -> Vec<(f64, f64, usize)> {
    let n = grid * grid;
    let mut by_d2 = std::collections::BTreeMap::<usize, (f64, usize)>::new();
    for i in 0..n {
        for j in (0..n).filter(|&j| j != i) {
            let (dy, dx) = ((i / grid).abs_diff(j / grid), (i % grid).abs_diff(j % grid));
            let e = by_d2.entry(dy * dy + dx * dx).or_default();
            e.0 += sim.get(i * n + j).copied().unwrap_or(f64::NAN);
            e.1 += 1;
        }
    }
    by_d2
        .into_iter()
        .map(|(d2, (s, c))| ((d2 as f64).sqrt(), s / c as f64, c))
        .collect()
}

/// What [`write_embedding_panels`] wrote and found.
#[derive(Clone, Debug)]
pub struct EmbeddingPanels {
    pub pca: FilterPca,
    pub by_distance: Vec<(f64, f64, usize)>,
    pub files: Vec<PathBuf>,
}

/// Figure 7's left and centre panels of a ViT's parameters, into `out`:
/// `patch_embed_pca.{svg,png,json}` (the first `keep` components and their variances) and
/// `pos_embed_similarity.{svg,png,json}` (the `(N, N)` matrix and its mean by grid distance);
/// the PNGs only when a font is there to label them.
pub fn write_embedding_panels(
    store: &ParamStore<f32>,
    cfg: &VitConfig,
    out: &Path,
    keep: usize,
) -> Result<EmbeddingPanels> {
    let pca = patch_embed_pca(&store.by_name("patch_embed.proj.weight")?.value, keep)?;
    let grid = cfg.grid();
    let sim = pos_embed_similarity(&store.by_name("pos_embed")?.value, 1)?;
    if sim.len() != grid.pow(4) {
        return Err(invalid!(
            "pos_embed has {} patch positions, the model's grid is {grid}×{grid}",
            (sim.len() as f64).sqrt()
        ));
    }
    let by_distance = similarity_by_distance(&sim, grid);
    let mut files = [
        "patch_embed_pca.svg",
        "patch_embed_pca.json",
        "pos_embed_similarity.svg",
        "pos_embed_similarity.json",
    ]
    .map(|f| out.join(f))
    .to_vec();
    plot_pca(&files[0], &pca)?;
    let json = |v: serde_json::Value| serde_json::to_vec_pretty(&v).expect("json values serialize");
    crate::io::atomic_write(
        &files[1],
        &json(json!({
            "definition": "PCA of the D patch-embedding filters (rows of patch_embed.proj.weight flattened to C*P*P values, centred on the mean filter) by thin SVD; components are unit vectors in (C, P, P) order, sign chosen so the largest-magnitude entry is positive; explained_variance = s^2 / (D - 1)",
            "pca": pca,
        })),
    )?;
    plot_pos_similarity(&files[2], &sim, grid)?;
    crate::io::atomic_write(
        &files[3],
        &json(json!({
            "definition": "cosine similarity of the position embeddings of every pair of patches (class-token entry excluded); row i = patch i in row-major grid order",
            "grid": grid,
            "similarity": sim.chunks(grid * grid).collect::<Vec<_>>(),
            "mean_by_distance": by_distance.iter().map(|&(d, s, c)| json!({"distance_patches": d, "mean_similarity": s, "pairs": c})).collect::<Vec<_>>(),
        })),
    )?;
    // The same pixels as PNG as well (smaller, and every viewer shows them), when there is a
    // font to label them with.
    if crate::plot::font().is_some() {
        let png = [
            out.join("patch_embed_pca.png"),
            out.join("pos_embed_similarity.png"),
        ];
        plot_pca(&png[0], &pca)?;
        plot_pos_similarity(&png[1], &sim, grid)?;
        files.extend(png);
    }
    Ok(EmbeddingPanels {
        pca,
        by_distance,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    /// A 2-D sine-cosine position embedding (as MAE's): half the dimensions encode the row,
    /// half the column, each as `sin(ω_k t), cos(ω_k t)`, `ω_k = ω_max · 100^(−k/K)`. The
    /// frequencies are scaled to the grid (`ω_max = π / (grid − 1)`): with MAE's unit-step
    /// `ω_0 = 1` the fastest pair wraps after π patches and the similarity levels off at about
    /// 0.73 beyond 4 patches (it even rises again), which is no test of "falls with distance".
    fn sincos_2d(grid: usize, dim: usize) -> Tensor<f64> {
        let quarter = dim / 4;
        let w_max = std::f64::consts::PI / (grid - 1).max(1) as f64;
        let mut v = vec![0.0; (1 + grid * grid) * dim];
        for r in 0..grid {
            for c in 0..grid {
                let row = &mut v[(1 + r * grid + c) * dim..(2 + r * grid + c) * dim];
                for (half, t) in [(0, r as f64), (1, c as f64)] {
                    for k in 0..quarter {
                        let w = w_max * 100f64.powf(-(k as f64) / quarter as f64);
                        row[half * 2 * quarter + k] = (w * t).sin();
                        row[half * 2 * quarter + quarter + k] = (w * t).cos();
                    }
                }
            }
        }
        Tensor::new(&[1, 1 + grid * grid, dim], v).unwrap()
    }

    /// Ranks (0-based, ties averaged) for a rank correlation.
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }

    #[test]
    fn sincos_similarity_falls_with_grid_distance() {
        let grid = 7;
        let n = grid * grid;
        let sim = pos_embed_similarity(&sincos_2d(grid, 64), 1).unwrap();
        // The similarity of patches (r, c) and (r + dy, c + dx) is ½(f(dy) + f(dx)) with
        // f(t) = mean_k cos(ω_k t), every ω_k t in [0, π]: it depends on the offset only
        // and falls strictly as either offset grows (tolerance 1e-3 on each step).
        let at = |dy: usize, dx: usize| sim[dy * grid + dx]; // patch (0, 0) against (dy, dx)
        for dy in 0..grid {
            for dx in 0..grid {
                if dx + 1 < grid {
                    assert!(
                        at(dy, dx + 1) < at(dy, dx) - 1e-3,
                        "({dy}, {dx}) → +1 column"
                    );
                }
                if dy + 1 < grid {
                    assert!(at(dy + 1, dx) < at(dy, dx) - 1e-3, "({dy}, {dx}) → +1 row");
                }
            }
        }
        // Every pair, against its Euclidean grid distance: rank correlation below −0.95.
        let (mut dist, mut s) = (Vec::new(), Vec::new());
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                let (dy, dx) = ((i / grid).abs_diff(j / grid), (i % grid).abs_diff(j % grid));
                dist.push(((dy * dy + dx * dx) as f64).sqrt());
                s.push(sim[i * n + j]);
            }
        }
        let (rd, rs) = (ranks(&dist), ranks(&s));
        let m = (rd.len() - 1) as f64 / 2.0;
        let cov: f64 = rd.iter().zip(&rs).map(|(a, b)| (a - m) * (b - m)).sum();
        let var = |r: &[f64]| r.iter().map(|a| (a - m).powi(2)).sum::<f64>();
        let rho = cov / (var(&rd) * var(&rs)).sqrt();
        assert!(rho < -0.95, "Spearman rho {rho}");
        // The mean by distance: nearest neighbours most alike, the far corners least.
        let by = similarity_by_distance(&sim, grid);
        assert_eq!(by[0].0, 1.0);
        assert!(by[0].1 > 0.98 && by.last().unwrap().1 < 0.6, "{by:?}");
        assert!(by
            .iter()
            .all(|b| b.1 <= by[0].1 && b.1 >= by.last().unwrap().1));
        // Symmetric, on the unit diagonal.
        for i in 0..n {
            assert!((sim[i * n + i] - 1.0).abs() < 1e-12);
            for j in 0..n {
                assert!((sim[i * n + j] - sim[j * n + i]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn known_components_are_recovered() {
        // Three orthonormal 2×(3×3) patterns (K = 18) with standard deviations 3, 2, 0.5:
        // filters = mean + Σ_k a_ik σ_k e_k, the a_ik centred and whitened over the filters so
        // the sample variances are exactly σ_k² (and the sample covariance is diagonal).
        let (c, p, d) = (2, 3, 40);
        let k = c * p * p;
        let mut rng = Rng::new(7);
        let mut basis: Vec<Vec<f64>> = Vec::new();
        while basis.len() < 3 {
            let mut v: Vec<f64> = (0..k).map(|_| rng.normal()).collect();
            for b in &basis {
                let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
            }
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            basis.push(v.into_iter().map(|x| x / n).collect());
        }
        // Coefficients: orthogonal, zero-mean columns of norm √(D−1) (Gram–Schmidt against
        // the constant vector too).
        let mut coef: Vec<Vec<f64>> = vec![vec![1.0 / (d as f64).sqrt(); d]];
        for _ in 0..3 {
            let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            for b in &coef {
                let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
            }
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            coef.push(v.into_iter().map(|x| x / n).collect());
        }
        let sigma = [3.0, 2.0, 0.5];
        let mean: Vec<f64> = (0..k).map(|j| 0.1 * j as f64).collect();
        let mut w = vec![0.0; d * k];
        for i in 0..d {
            for j in 0..k {
                w[i * k + j] = mean[j]
                    + (0..3)
                        .map(|m| coef[m + 1][i] * ((d - 1) as f64).sqrt() * sigma[m] * basis[m][j])
                        .sum::<f64>();
            }
        }
        let weight = Tensor::new(&[d, c, p, p], w).unwrap();
        let pca = patch_embed_pca(&weight, 28).unwrap();
        // Rank 3: exactly three components, whatever was asked for.
        assert_eq!(pca.components.len(), 3);
        for m in 0..3 {
            assert!(
                (pca.explained_variance[m] - sigma[m] * sigma[m]).abs() < 1e-9,
                "variance {m}: {} vs {}",
                pca.explained_variance[m],
                sigma[m] * sigma[m]
            );
            // Equal up to sign (tolerance 1e-9 per entry, f64 SVD of an exact rank-3 matrix).
            let dot: f64 = pca.components[m]
                .iter()
                .zip(&basis[m])
                .map(|(a, b)| a * b)
                .sum();
            let s = dot.signum();
            for (a, b) in pca.components[m].iter().zip(&basis[m]) {
                assert!((a - s * b).abs() < 1e-9, "component {m}: {a} vs {}", s * b);
            }
        }
        let total: f64 = sigma.iter().map(|s| s * s).sum();
        assert!((pca.total_variance - total).abs() < 1e-9);
        assert!((pca.explained_variance_ratio[0] - 9.0 / total).abs() < 1e-12);
        // f32 filters (as stored) give the same components to f32 precision.
        let pca32 = patch_embed_pca(&weight.cast::<f32>(), 2).unwrap();
        assert_eq!(pca32.components.len(), 2);
        let dot: f64 = pca32.components[0]
            .iter()
            .zip(&pca.components[0])
            .map(|(a, b)| a * b)
            .sum();
        assert!((dot - 1.0).abs() < 1e-5, "{dot}");
        assert!(patch_embed_pca(&Tensor::<f32>::zeros(&[1, 1, 3, 3]), 4).is_err());
        assert!(patch_embed_pca(&Tensor::<f32>::zeros(&[4, 1, 3, 2]), 4).is_err());
    }

    #[test]
    fn panels_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let grid = 4;
        let sim = pos_embed_similarity(&sincos_2d(grid, 32), 1).unwrap();
        let sp = dir.path().join("pos.svg");
        plot_pos_similarity(&sp, &sim, grid).unwrap();
        let svg = std::fs::read_to_string(&sp).unwrap();
        // One cell per (tile, pixel): N tiles of N values, plus the colour bar.
        assert!(
            svg.matches("<rect").count() >= 256,
            "{}",
            svg.matches("<rect").count()
        );
        assert!(plot_pos_similarity(&sp, &sim[1..], grid).is_err());
        let mut rng = Rng::new(1);
        let w = Tensor::<f32>::from_fn(&[16, 3, 4, 4], |_| rng.normal() as f32);
        let pca = patch_embed_pca(&w, 28).unwrap();
        assert_eq!(pca.components.len(), 15, "rank of 16 centred filters");
        let pp = dir.path().join("pca.svg");
        plot_pca(&pp, &pca).unwrap();
        let svg = std::fs::read_to_string(&pp).unwrap();
        assert!(svg.matches("<rect").count() >= 15 * 48);
        if crate::plot::tests::font_or_skip() {
            let texts = crate::plot::tests::svg_texts(&svg);
            assert!(texts.iter().any(|t| t.starts_with("1 · ")), "{texts:?}");
        }
    }
}
