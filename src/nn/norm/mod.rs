//! Normalization layers — LayerNorm, InstanceNorm, GroupNorm, BatchNorm — as fused ops with
//! hand-derived backward passes, PyTorch semantics, and optional masks of valid positions.
//!
//! Every layer normalizes groups of entries of `x` with their own statistics
//! (`x̂ = (x − μ)/√(σ² + ε)`, population variance) and applies a per-channel (BatchNorm,
//! InstanceNorm, GroupNorm) or per-element (LayerNorm) affine map `y = γ x̂ + β`. For one group
//! of `n` entries with upstream gradient `g = ∂L/∂y`:
//!
//! ```text
//!   ∂L/∂x̂_i = g_i γ_i =: h_i
//!   ∂L/∂x_i = (1/σ̃) (h_i − (1/n) Σ_j h_j − x̂_i (1/n) Σ_j h_j x̂_j),   σ̃ = √(σ² + ε)
//!   ∂L/∂γ_k = Σ_{i ↦ k} g_i x̂_i,   ∂L/∂β_k = Σ_{i ↦ k} g_i
//! ```
//!
//! (the two means come from `∂μ/∂x_i = 1/n` and `∂σ²/∂x_i = 2(x_i − μ)/n`).
//!
//! **Masks.** Each layer takes an optional mask of valid positions, broadcastable to `x` (same
//! number of axes, each of size 1 or equal), with values 0 (padding) or 1 (valid). Statistics are
//! taken over valid entries only (`n = Σ m`), padded outputs are 0, and no gradient reaches
//! padded inputs: the formulas above with every sum weighted by `m` and `∂L/∂x_i` multiplied by
//! `m_i`. A group with no valid entry outputs zeros.
//!
//! Layouts follow the assignment: `(N, C, F)` = (batch, channels, features) or `(N, C, H, W)`;
//! the trailing axes after `C` are flattened into one feature axis.
//!
//! **Files.** One concept each: [`mask`] (expanding a broadcast 0/1 mask), [`layout`] (the
//! `(N, C, F)` sizes and the row layout shared by LayerNorm, GroupNorm and InstanceNorm),
//! [`row_norm`] (the fused row-normalization op and `layer_norm`, `group_norm`,
//! `instance_norm`), [`batch_norm`](mod@batch_norm) (the fused per-channel op), [`reference`] (the same
//! normalizations unrolled into primitive ops, for testing), [`modules`] (`LayerNorm`,
//! `GroupNorm`, `InstanceNorm`), [`batch_norm_module`] (`BatchNorm` with its running
//! statistics), [`fused`] (one tape-free forward + backward, for benchmarks); [`affine`],
//! [`check`] and [`buffer`] hold the small pieces they share. The tape-free statistics query
//! lives in [`crate::analysis::norm_stats`] (re-exported here).

pub mod affine;
pub mod batch_norm;
pub mod batch_norm_module;
pub mod buffer;
pub mod check;
pub mod fused;
pub mod layout;
pub mod mask;
pub mod modules;
pub mod reference;
pub mod row_norm;

pub use crate::analysis::norm_stats::{norm_stats, NormStats};
pub use batch_norm::{batch_norm, BatchNormMode};
pub use batch_norm_module::{BatchNorm, RunningStats};
pub use fused::fused_forward_backward;
pub use mask::expand_mask;
pub use modules::{GroupNorm, InstanceNorm, LayerNorm};
pub use reference::{norm_reference, RefKind};
pub use row_norm::{group_norm, instance_norm, layer_norm};
