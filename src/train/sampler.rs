//! Stateless mini-batch sampling: the batch of step `s` depends only on `(seed, s)`, so a resumed
//! run draws exactly the batches the uninterrupted run would have drawn.

use crate::error::Result;
use crate::init::Rng;
use crate::invalid;
use crate::tensor::{Element, Tensor};

/// Epoch-shuffled mini-batches over `n` items: epoch `e` visits the permutation drawn from
/// `Rng::new(seed ⊕ hash(e))`, step `s` is batch `s mod steps_per_epoch` of epoch
/// `s / steps_per_epoch`.
#[derive(Clone, Debug)]
pub struct BatchSampler {
    n: usize,
    batch_size: usize,
    drop_last: bool,
    shuffle: bool,
    seed: u64,
    cache: Option<(u64, Vec<usize>)>,
}

impl BatchSampler {
    /// `drop_last` skips the final short batch of each epoch (every batch then has `batch_size`).
    pub fn new(n: usize, batch_size: usize, drop_last: bool, seed: u64) -> Result<Self> {
        if n == 0 || batch_size == 0 {
            return Err(invalid!(
                "batch sampler needs items and a positive batch size, got n={n}, batch_size={batch_size}"
            ));
        }
        if drop_last && batch_size > n {
            return Err(invalid!(
                "batch size {batch_size} exceeds the {n} training items with drop_last"
            ));
        }
        Ok(BatchSampler {
            n,
            batch_size,
            drop_last,
            shuffle: true,
            seed,
            cache: None,
        })
    }
    /// Sequential order (no shuffling), e.g. for evaluation.
    pub fn sequential(mut self) -> Self {
        self.shuffle = false;
        self
    }
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
    pub fn steps_per_epoch(&self) -> u64 {
        if self.drop_last {
            (self.n / self.batch_size) as u64
        } else {
            self.n.div_ceil(self.batch_size) as u64
        }
    }
    /// The epoch step `step` falls in.
    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.steps_per_epoch()
    }
    /// Item indices of the batch of training step `step`.
    pub fn batch(&mut self, step: u64) -> Vec<usize> {
        let spe = self.steps_per_epoch();
        let (epoch, k) = (step / spe, (step % spe) as usize);
        let start = k * self.batch_size;
        let end = (start + self.batch_size).min(self.n);
        self.order(epoch)[start..end].to_vec()
    }
    fn order(&mut self, epoch: u64) -> &[usize] {
        if self.cache.as_ref().map(|c| c.0) != Some(epoch) {
            let perm = if self.shuffle {
                // Golden-ratio mixing keeps nearby epochs' seeds far apart.
                Rng::new(self.seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                    .permutation(self.n)
            } else {
                (0..self.n).collect()
            };
            self.cache = Some((epoch, perm));
        }
        &self.cache.as_ref().expect("cache filled above").1
    }
}

/// Rows `idx` of `x` (first axis), e.g. a mini-batch of examples: `(N, …) → (len(idx), …)`.
pub fn select_rows<T: Element>(x: &Tensor<T>, idx: &[usize]) -> Result<Tensor<T>> {
    if x.ndim() == 0 {
        return Err(invalid!(
            "select_rows needs at least one axis, got a scalar"
        ));
    }
    let n = x.dim(0);
    let row: usize = x.shape()[1..].iter().product();
    let mut data = Vec::with_capacity(idx.len() * row);
    for &i in idx {
        if i >= n {
            return Err(invalid!("select_rows: index {i} out of range for {n} rows"));
        }
        data.extend_from_slice(&x.data()[i * row..(i + 1) * row]);
    }
    let mut shape = x.shape().to_vec();
    shape[0] = idx.len();
    Tensor::new(&shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_item_once_and_are_reproducible() {
        let mut s = BatchSampler::new(10, 3, false, 7).unwrap();
        assert_eq!(s.steps_per_epoch(), 4);
        let mut seen: Vec<usize> = (0..4).flat_map(|k| s.batch(k)).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let e1: Vec<usize> = (4..8).flat_map(|k| s.batch(k)).collect();
        let mut fresh = BatchSampler::new(10, 3, false, 7).unwrap();
        assert_eq!(fresh.batch(5), s.batch(5));
        assert_ne!(e1, (0..4).flat_map(|k| fresh.batch(k)).collect::<Vec<_>>());
        let mut d = BatchSampler::new(10, 3, true, 7).unwrap();
        assert_eq!(d.steps_per_epoch(), 3);
        assert_eq!(d.batch(2).len(), 3);
        assert!(BatchSampler::new(2, 3, true, 0).is_err());
    }

    #[test]
    fn select_rows_picks_and_checks() {
        let x = Tensor::<f32>::from_f64(&[3, 2], &[0., 1., 2., 3., 4., 5.]).unwrap();
        let y = select_rows(&x, &[2, 0]).unwrap();
        assert_eq!(y.shape(), &[2, 2]);
        assert_eq!(y.data(), &[4., 5., 0., 1.]);
        assert!(select_rows(&x, &[3]).is_err());
    }
}
