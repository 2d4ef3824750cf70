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
    and_count(words, words)
}

/// |a ∩ b|. The slices must have the same length. Uses the POPCNT instruction when the CPU
/// has it (checked at run time, cached by std; the baseline x86-64 target lacks it and
/// counts bits with a dozen shifts and masks per word).
#[inline]
pub fn and_count(a: &[u64], b: &[u64]) -> usize {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: POPCNT checked just above; the body is safe code.
            return unsafe { and_count_popcnt(a, b) };
        }
    }
    and_count_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn and_count_popcnt(a: &[u64], b: &[u64]) -> usize {
    and_count_portable(a, b)
}

#[inline(always)]
fn and_count_portable(a: &[u64], b: &[u64]) -> usize {
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

/// Byte i of `SPREAD[v]` is bit i of v: adding `SPREAD[b]` to a `u64` adds the eight bits of
/// byte b to eight byte-wide counters at once.
const SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut v = 0;
    while v < 256 {
        let mut i = 0;
        while i < 8 {
            t[v] |= ((v as u64 >> i) & 1) << (8 * i);
            i += 1;
        }
        v += 1;
    }
    t
};

/// Column sums of a transposed bit matrix over the set bits of a sparse input: with column
/// j of `cols` the `cell_words` words at `cols[j·cell_words..]` (bit i: cell i holds input
/// bit j), sets `out[i] = Σ_{j ∈ active} bit i of column j` for the `out.len()` cells, i.e.
/// |U_i ∩ x| when `active` lists the set bits of x. The cost is the number of active bits
/// times the column length, not N times the cells (the row-wise [`and_counts`] pass).
///
/// `bytes` is scratch of at least `cell_words · 8` words. Exact whatever the CPU: on x86-64
/// with AVX2 (checked at run time, cached by std) the counters live in registers; elsewhere
/// eight byte-wide counters per `u64` (SWAR), flushed before they could overflow.
pub fn column_counts(
    cols: &[u64],
    cell_words: usize,
    active: &[u16],
    bytes: &mut [u64],
    out: &mut [u16],
) {
    assert!(out.len() <= cell_words * 64, "more cells than column bits");
    assert!(
        active
            .iter()
            .all(|&j| (j as usize + 1) * cell_words <= cols.len()),
        "active bit past the last column"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if active.len() <= 255 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 checked just above; the column indices were checked against
            // `cols` and the counters cannot overflow (≤ 255 active bits).
            unsafe { column_counts_avx2(cols, cell_words, active, out) };
            return;
        }
    }
    column_counts_portable(cols, cell_words, active, bytes, out);
}

pub(crate) fn column_counts_portable(
    cols: &[u64],
    cell_words: usize,
    active: &[u16],
    bytes: &mut [u64],
    out: &mut [u16],
) {
    let bytes = &mut bytes[..cell_words * 8];
    out.fill(0);
    for batch in active.chunks(255) {
        bytes.fill(0);
        for &j in batch {
            let col = &cols[j as usize * cell_words..(j as usize + 1) * cell_words];
            for (&w, acc) in col.iter().zip(bytes.chunks_exact_mut(8)) {
                for (b, a) in acc.iter_mut().enumerate() {
                    *a += SPREAD[(w >> (8 * b)) as usize & 0xff];
                }
            }
        }
        // Byte t of bytes[w·8 + b] counts cell 64w + 8b + t.
        for (chunk, acc) in out.chunks_mut(8).zip(bytes.iter()) {
            for (o, c) in chunk.iter_mut().zip(acc.to_le_bytes()) {
                *o += c as u16;
            }
        }
    }
}

/// Thirty-two cells at a time: their byte counters stay in one register while every active
/// column's four bytes for them are added (broadcast, each byte replicated eight times,
/// masked to one bit per lane, compared: a 0/−1 byte per cell, subtracted).
///
/// # Safety
/// The CPU must support AVX2; every `(j + 1)·cell_words ≤ cols.len()`; at most 255 active.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn column_counts_avx2(cols: &[u64], cell_words: usize, active: &[u16], out: &mut [u16]) {
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_castsi256_si128, _mm256_cmpeq_epi8, _mm256_cvtepu8_epi16,
        _mm256_extracti128_si256, _mm256_set1_epi32, _mm256_set1_epi64x, _mm256_setr_epi8,
        _mm256_setzero_si256, _mm256_shuffle_epi8, _mm256_storeu_si256, _mm256_sub_epi8,
    };
    // Lane l of the shuffle takes byte l / 8 of the broadcast dword; the mask keeps bit l % 8.
    let replicate = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let base = cols.as_ptr() as *const u8;
    let stride = cell_words * 8;
    let cells = out.len();
    let mut chunk = [0u16; 32];
    for c in 0..cells.div_ceil(32) {
        let mut acc = _mm256_setzero_si256();
        for &j in active {
            // SAFETY: byte 4c..4c+4 of column j lies inside it (4c + 4 ≤ 8·cell_words since
            // 32c < cells ≤ 64·cell_words and 32 divides 64), and column j inside `cols`.
            let word = (base.add(j as usize * stride + 4 * c) as *const i32).read_unaligned();
            let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(word), replicate);
            let hit = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
            acc = _mm256_sub_epi8(acc, hit);
        }
        let lo: __m256i = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(acc));
        let hi: __m256i = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(acc, 1));
        let dst = &mut out[32 * c..cells.min(32 * c + 32)];
        if dst.len() == 32 {
            _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, lo);
            _mm256_storeu_si256(dst.as_mut_ptr().add(16) as *mut __m256i, hi);
        } else {
            _mm256_storeu_si256(chunk.as_mut_ptr() as *mut __m256i, lo);
            _mm256_storeu_si256(chunk.as_mut_ptr().add(16) as *mut __m256i, hi);
            let len = dst.len();
            dst.copy_from_slice(&chunk[..len]);
        }
    }
}

/// Writes the indices of the set bits of `words` (ascending) into `out` and returns how
/// many; `out` must have room for all of them.
pub fn ones_into(words: &[u64], out: &mut [u16]) -> usize {
    let mut n = 0;
    for (w, &word) in words.iter().enumerate() {
        let mut rest = word;
        while rest != 0 {
            out[n] = (w * 64 + rest.trailing_zeros() as usize) as u16;
            rest &= rest - 1;
            n += 1;
        }
    }
    n
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
