//! Word-level helpers for binary vectors stored as `[u64]`, bit `j` in word `j / 64`, bit
//! `j % 64`. Encoders write inputs in this layout and the memory's weight rows use it too, so
//! the hot loop of recognition is one AND + popcount per word.

/// Words needed for `bits` bits.
pub const fn words_for(bits: usize) -> usize {
    bits.div_ceil(64)
}

/// Sets bit `j`. Panics if `j` is past the slice.
#[inline]
pub fn set_bit(words: &mut [u64], j: usize) {
    words[j / 64] |= 1u64 << (j % 64);
}

/// Whether bit `j` is set. Panics if `j` is past the slice.
#[inline]
pub fn get_bit(words: &[u64], j: usize) -> bool {
    words[j / 64] >> (j % 64) & 1 == 1
}

/// Number of set bits.
#[inline]
pub fn count_ones(words: &[u64]) -> usize {
    words.iter().map(|w| w.count_ones() as usize).sum()
}

/// |a ∩ b|. The slices must have the same length.
#[inline]
pub fn and_count(a: &[u64], b: &[u64]) -> usize {
    debug_assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x & y).count_ones() as usize)
        .sum()
}

/// `out[i] = |rows_i ∩ x|` for the consecutive rows of `x.len()` words in `rows` (the
/// memory's hot loop). On x86-64 CPUs with AVX2 and POPCNT (checked once per call, cached by
/// std) the same loop runs compiled for them, which LLVM vectorises; the baseline x86-64
/// target has no popcount instruction and is several times slower. Counts are exact either
/// way, so results do not depend on the CPU.
pub fn and_counts(rows: &[u64], x: &[u64], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("popcnt")
        {
            // SAFETY: `and_counts_avx2` only requires the CPU features checked just above.
            unsafe { and_counts_avx2(rows, x, out) };
            return;
        }
    }
    and_counts_portable(rows, x, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn and_counts_avx2(rows: &[u64], x: &[u64], out: &mut [u16]) {
    and_counts_portable(rows, x, out);
}

#[inline(always)]
fn and_counts_portable(rows: &[u64], x: &[u64], out: &mut [u16]) {
    for (row, u) in rows.chunks_exact(x.len()).zip(out) {
        *u = row
            .iter()
            .zip(x)
            .map(|(r, b)| (r & b).count_ones() as u16)
            .sum();
    }
}

/// Sets `bits` consecutive bits starting at `start`.
pub fn set_run(words: &mut [u64], start: usize, bits: usize) {
    for j in start..start + bits {
        set_bit(words, j);
    }
}

/// Indices of the set bits, ascending.
pub fn ones(words: &[u64]) -> impl Iterator<Item = usize> + '_ {
    words.iter().enumerate().flat_map(|(w, &word)| {
        let mut rest = word;
        std::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let b = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            Some(w * 64 + b)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip() {
        let mut w = vec![0u64; words_for(130)];
        assert_eq!(w.len(), 3);
        for j in [0, 63, 64, 129] {
            set_bit(&mut w, j);
        }
        assert!(get_bit(&w, 63) && !get_bit(&w, 62));
        assert_eq!(count_ones(&w), 4);
        assert_eq!(ones(&w).collect::<Vec<_>>(), vec![0, 63, 64, 129]);
        let mut v = vec![0u64; 3];
        set_run(&mut v, 60, 6);
        assert_eq!(and_count(&w, &v), 2);
        let rows = [w.clone(), v.clone(), vec![u64::MAX; 3]].concat();
        let mut out = [0u16; 3];
        and_counts(&rows, &w, &mut out);
        assert_eq!(out, [4, 2, 4]);
        let mut portable = [0u16; 3];
        and_counts_portable(&rows, &w, &mut portable);
        assert_eq!(portable, out);
    }
}
