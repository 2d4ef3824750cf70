//! Stable atom identity across updates.
//!
//! The learning objective is invariant under signed permutations of the atoms, so nothing in
//! the algorithm keeps atom i meaning the same thing from one step to the next: a large early
//! step can reorder the basis, and a polar factor may flip an atom's sign. Downstream stages
//! key per-atom statistics on the index, so after every step the new atoms are matched to the
//! previous ones (largest |⟨old_i, new_j⟩| first) and their signs fixed so ⟨old_i, new_i⟩ ≥ 0.
//! The learner applies the same signed permutation to its state (rows of A and d); the
//! algorithm is equivariant under it, so this changes labels, never the trajectory.

use nalgebra::DMatrix;

use super::polar::gemm_tn;

/// Buffers for matching, allocated once.
#[derive(Debug, Clone)]
pub(crate) struct AtomMatcher {
    /// C = D_oldᵀ·D_new, C_ij = ⟨old_i, new_j⟩.
    overlap: DMatrix<f64>,
    /// Slot i of the new dictionary takes new atom `perm[i]`, multiplied by `sign[i]`.
    perm: Vec<usize>,
    sign: Vec<f64>,
    taken: Vec<bool>,
    order: Vec<usize>,
    best: Vec<f64>,
    scratch: Vec<f64>,
}

impl AtomMatcher {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            overlap: DMatrix::zeros(n, n),
            perm: vec![0; n],
            sign: vec![1.0; n],
            taken: vec![false; n],
            order: vec![0; n],
            best: vec![0.0; n],
            scratch: vec![0.0; n],
        }
    }

    /// Heap bytes held.
    pub(crate) fn bytes(&self) -> usize {
        let n = self.perm.len();
        8 * (n * n + 6 * n) + n
    }

    /// Computes the signed permutation aligning the columns of `new` to those of `old`.
    /// Returns false when it is the identity with all signs positive (nothing to apply).
    pub(crate) fn match_atoms(&mut self, old: &DMatrix<f64>, new: &DMatrix<f64>) -> bool {
        let n = old.ncols();
        gemm_tn(&mut self.overlap, 1.0, old, new);
        // Fast path: each old atom's best match is a different new atom. Then every slot gets
        // its best partner, which is also what the greedy rule below would give.
        self.taken.iter_mut().for_each(|t| *t = false);
        let mut distinct = true;
        for i in 0..n {
            let j = self.argmax_free(i, false);
            self.perm[i] = j;
            distinct &= !std::mem::replace(&mut self.taken[j], true);
        }
        if !distinct {
            self.greedy();
        }
        let mut identity = true;
        for i in 0..n {
            let c = self.overlap[(i, self.perm[i])];
            self.sign[i] = if c < 0.0 { -1.0 } else { 1.0 };
            identity &= self.perm[i] == i && self.sign[i] > 0.0;
        }
        !identity
    }

    /// Greedy matching: old atoms in decreasing order of their best overlap each take the
    /// best new atom still free. O(n²) plus a sort of n indices, no allocation.
    fn greedy(&mut self) {
        let n = self.perm.len();
        for i in 0..n {
            self.order[i] = i;
            self.best[i] = self.overlap[(i, self.perm[i])].abs();
        }
        let best = &self.best;
        self.order
            .sort_unstable_by(|&a, &b| best[b].total_cmp(&best[a]).then(a.cmp(&b)));
        self.taken.iter_mut().for_each(|t| *t = false);
        for r in 0..n {
            let i = self.order[r];
            let j = self.argmax_free(i, true);
            self.perm[i] = j;
            self.taken[j] = true;
        }
    }

    /// The column with the largest |C_ij| in row i (among free ones if `only_free`); ties go
    /// to the lowest index.
    fn argmax_free(&self, i: usize, only_free: bool) -> usize {
        let mut best = (usize::MAX, f64::NEG_INFINITY);
        for j in 0..self.overlap.ncols() {
            if only_free && self.taken[j] {
                continue;
            }
            let v = self.overlap[(i, j)].abs();
            if v > best.1 {
                best = (j, v);
            }
        }
        best.0
    }

    /// `dst[:, i] = sign[i] · src[:, perm[i]]` (atoms are columns).
    pub(crate) fn permute_columns(&self, src: &DMatrix<f64>, dst: &mut DMatrix<f64>) {
        for (i, mut col) in dst.column_iter_mut().enumerate() {
            let s = self.sign[i];
            for (d, &v) in col.iter_mut().zip(src.column(self.perm[i]).iter()) {
                *d = s * v;
            }
        }
    }

    /// In place: row i of `m` becomes `sign[i] ·` old row `perm[i]` (atoms are rows of A, d).
    pub(crate) fn permute_rows(&mut self, m: &mut DMatrix<f64>) {
        for mut col in m.column_iter_mut() {
            self.scratch.copy_from_slice(col.as_slice());
            for (i, v) in col.iter_mut().enumerate() {
                *v = self.sign[i] * self.scratch[self.perm[i]];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn orthogonal(n: usize, seed: u64) -> DMatrix<f64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        DMatrix::<f64>::from_fn(n, n, |_, _| StandardNormal.sample(&mut rng))
            .qr()
            .q()
    }

    #[test]
    fn recovers_a_signed_permutation() {
        let n = 9;
        let old = orthogonal(n, 1);
        let perm = [3, 0, 8, 1, 2, 7, 6, 5, 4];
        let mut new = DMatrix::zeros(n, n);
        for (j, &p) in perm.iter().enumerate() {
            let s = if j % 3 == 0 { -1.0 } else { 1.0 };
            new.set_column(j, &(old.column(p) * s));
        }
        let mut m = AtomMatcher::new(n);
        assert!(m.match_atoms(&old, &new));
        let mut aligned = DMatrix::zeros(n, n);
        m.permute_columns(&new, &mut aligned);
        assert!((&aligned - &old).norm() < 1e-14);
        // Rows of the analysis matrix Dᵀ move the same way.
        let mut rows = new.transpose();
        m.permute_rows(&mut rows);
        assert!((rows - old.transpose()).norm() < 1e-14);
        // Matching a dictionary against itself changes nothing.
        assert!(!m.match_atoms(&old, &old));
    }

    #[test]
    fn unrelated_bases_still_give_a_permutation() {
        // Random bases: best matches often collide, so the greedy path runs.
        let n = 7;
        let mut m = AtomMatcher::new(n);
        let mut collisions = 0;
        for seed in 0..20 {
            let (old, new) = (orthogonal(n, 2 * seed), orthogonal(n, 2 * seed + 1));
            m.match_atoms(&old, &new);
            let mut p = m.perm.clone();
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>(), "seed {seed}: {:?}", m.perm);
            // The atom with the largest overlap overall always gets its best partner.
            let (mut bi, mut bj, mut bv) = (0, 0, -1.0);
            for i in 0..n {
                for j in 0..n {
                    if m.overlap[(i, j)].abs() > bv {
                        (bi, bj, bv) = (i, j, m.overlap[(i, j)].abs());
                    }
                }
            }
            assert_eq!(m.perm[bi], bj);
            let mut aligned = DMatrix::zeros(n, n);
            m.permute_columns(&new, &mut aligned);
            assert!((0..n).all(|i| aligned.column(i).dot(&old.column(i)) >= 0.0));
            let mut argmaxes: Vec<_> = (0..n).map(|i| m.argmax_free(i, false)).collect();
            argmaxes.sort_unstable();
            argmaxes.dedup();
            collisions += usize::from(argmaxes.len() < n);
        }
        assert!(collisions > 0, "the greedy path was not exercised");
    }
}
