//! Small dense and sparse linear algebra in f64 that the solvers share: a Cholesky factor for
//! the symmetric positive-definite systems of Newton and ADMM, and a compressed-sparse-row
//! matrix for constraint matrices, and the single-threaded f32 `gemm` call the fused paths use.

use gemm::Parallelism;

use crate::{Error, Result};

/// The lower-triangular Cholesky factor L of a symmetric positive-definite d×d matrix M = LLᵀ
/// (row-major, lower triangle read).
#[derive(Debug, Clone)]
pub struct Cholesky {
    l: Vec<f64>,
    d: usize,
}

impl Cholesky {
    /// Factors M (row-major d×d, only its lower triangle is read); `None` if M is not
    /// positive definite (a non-positive or non-finite pivot).
    pub fn factor(m: &[f64], d: usize) -> Option<Self> {
        debug_assert_eq!(m.len(), d * d);
        let mut l = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..=i {
                let (li, lj) = (&l[i * d..i * d + j], &l[j * d..j * d + j]);
                let s: f64 = li.iter().zip(lj).map(|(a, b)| a * b).sum();
                if i == j {
                    let v = m[i * d + i] - s;
                    if v <= 0.0 || !v.is_finite() {
                        return None;
                    }
                    l[i * d + i] = v.sqrt();
                } else {
                    l[i * d + j] = (m[i * d + j] - s) / l[j * d + j];
                }
            }
        }
        Some(Cholesky { l, d })
    }

    /// The dimension d.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// M⁻¹, row-major d×d (one solve per column).
    pub fn inverse(&self) -> Vec<f64> {
        let d = self.d;
        let mut inv = vec![0.0; d * d];
        let mut e = vec![0.0; d];
        for c in 0..d {
            e.fill(0.0);
            e[c] = 1.0;
            self.solve_in_place(&mut e);
            for (r, v) in e.iter().enumerate() {
                inv[r * d + c] = *v;
            }
        }
        inv
    }

    /// Overwrites b with M⁻¹b (a forward and a backward triangular solve).
    pub fn solve_in_place(&self, b: &mut [f64]) {
        let (l, d) = (&self.l, self.d);
        for i in 0..d {
            let row = &l[i * d..i * d + i];
            let s: f64 = row.iter().zip(&b[..i]).map(|(a, v)| a * v).sum();
            b[i] = (b[i] - s) / l[i * d + i];
        }
        for i in (0..d).rev() {
            let mut s = 0.0;
            for k in i + 1..d {
                s += l[k * d + i] * b[k];
            }
            b[i] = (b[i] - s) / l[i * d + i];
        }
    }
}

/// A sparse matrix in compressed sparse row form.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrMatrix {
    rows: usize,
    cols: usize,
    indptr: Vec<usize>,
    indices: Vec<usize>,
    values: Vec<f64>,
}

impl CsrMatrix {
    /// From a row-major dense `rows × cols` slice, keeping the non-zeros.
    pub fn from_dense(dense: &[f64], rows: usize, cols: usize) -> Result<Self> {
        if dense.len() != rows * cols {
            return Err(Error::invalid(format!(
                "matrix has {} entries, expected {rows}×{cols} = {}",
                dense.len(),
                rows * cols
            )));
        }
        let mut m = CsrMatrix {
            rows,
            cols,
            indptr: Vec::with_capacity(rows + 1),
            indices: Vec::new(),
            values: Vec::new(),
        };
        m.indptr.push(0);
        for r in 0..rows {
            for (c, &v) in dense[r * cols..(r + 1) * cols].iter().enumerate() {
                if v != 0.0 {
                    m.indices.push(c);
                    m.values.push(v);
                }
            }
            m.indptr.push(m.indices.len());
        }
        Ok(m)
    }

    /// From (row, column, value) triplets; duplicates are summed.
    pub fn from_triplets(
        rows: usize,
        cols: usize,
        triplets: &[(usize, usize, f64)],
    ) -> Result<Self> {
        let mut sorted = triplets.to_vec();
        if let Some(&(r, c, _)) = sorted.iter().find(|(r, c, _)| *r >= rows || *c >= cols) {
            return Err(Error::invalid(format!(
                "entry ({r}, {c}) is outside a {rows}×{cols} matrix"
            )));
        }
        sorted.sort_by_key(|&(r, c, _)| (r, c));
        let mut m = CsrMatrix {
            rows,
            cols,
            indptr: vec![0; rows + 1],
            indices: Vec::with_capacity(sorted.len()),
            values: Vec::with_capacity(sorted.len()),
        };
        let mut last = None;
        for (r, c, v) in sorted {
            if last == Some((r, c)) {
                *m.values.last_mut().expect("a previous entry") += v;
                continue;
            }
            last = Some((r, c));
            m.indices.push(c);
            m.values.push(v);
            m.indptr[r + 1] += 1;
        }
        for r in 0..rows {
            m.indptr[r + 1] += m.indptr[r];
        }
        Ok(m)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// The stored entries.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Row r's (column, value) entries.
    pub fn row(&self, r: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let range = self.indptr[r]..self.indptr[r + 1];
        self.indices[range.clone()]
            .iter()
            .copied()
            .zip(self.values[range].iter().copied())
    }

    /// Entry (r, c), 0 where none is stored (a binary search in row r, whose columns are
    /// sorted).
    pub fn get(&self, r: usize, c: usize) -> f64 {
        let range = self.indptr[r]..self.indptr[r + 1];
        let (idx, val) = (&self.indices[range.clone()], &self.values[range]);
        idx.binary_search(&c).map_or(0.0, |k| val[k])
    }

    /// The dense row-major copy.
    pub fn to_dense(&self) -> Vec<f64> {
        let mut d = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            for (c, v) in self.row(r) {
                d[r * self.cols + c] += v;
            }
        }
        d
    }

    /// out = M v.
    pub fn mul_vec(&self, v: &[f64], out: &mut [f64]) {
        for (r, o) in out.iter_mut().enumerate() {
            let range = self.indptr[r]..self.indptr[r + 1];
            *o = self.indices[range.clone()]
                .iter()
                .zip(&self.values[range])
                .map(|(&c, &a)| a * v[c])
                .sum();
        }
    }

    /// out = Mᵀ v.
    pub fn mul_transpose_vec(&self, v: &[f64], out: &mut [f64]) {
        out.fill(0.0);
        for (r, &vr) in v.iter().enumerate() {
            if vr == 0.0 {
                continue;
            }
            let range = self.indptr[r]..self.indptr[r + 1];
            for (&c, &a) in self.indices[range.clone()].iter().zip(&self.values[range]) {
                out[c] += a * vr;
            }
        }
    }

    /// Scales entry (r, c) by left[r] · right[c].
    pub fn scale(&mut self, left: &[f64], right: &[f64]) {
        for r in 0..self.rows {
            for k in self.indptr[r]..self.indptr[r + 1] {
                self.values[k] *= left[r] * right[self.indices[k]];
            }
        }
    }

    /// Scales entry (r, c) by `first` and then by left[r] · right[c] (the two products of
    /// [`CsrMatrix::scale`] calls in that order, bit for bit), and writes the ∞-norms of the
    /// scaled rows and columns into `row_norms` and `col_norms`: one pass where the three
    /// calls made three.
    pub fn scale_with_norms(
        &mut self,
        first: f64,
        left: &[f64],
        right: &[f64],
        row_norms: &mut [f64],
        col_norms: &mut [f64],
    ) {
        col_norms.fill(0.0);
        for r in 0..self.rows {
            let range = self.indptr[r]..self.indptr[r + 1];
            let mut row_max = 0.0f64;
            for (&c, v) in self.indices[range.clone()]
                .iter()
                .zip(&mut self.values[range])
            {
                *v = (*v * first) * (left[r] * right[c]);
                let a = v.abs();
                // Plain comparisons, not f64::max: QpProblem refuses NaN, and f64::max's NaN
                // handling costs as much as the rest of the loop (the set-up's scaling pass).
                if a > row_max {
                    row_max = a;
                }
                if a > col_norms[c] {
                    col_norms[c] = a;
                }
            }
            row_norms[r] = row_max;
        }
    }

    /// The ∞-norm of every column, into `out` (length cols).
    pub fn column_inf_norms(&self, out: &mut [f64]) {
        out.fill(0.0);
        for (&c, &v) in self.indices.iter().zip(&self.values) {
            out[c] = out[c].max(v.abs());
        }
    }

    /// The ∞-norm of every row, into `out` (length rows).
    pub fn row_inf_norms(&self, out: &mut [f64]) {
        for (r, o) in out.iter_mut().enumerate() {
            *o = self.values[self.indptr[r]..self.indptr[r + 1]]
                .iter()
                .fold(0.0, |m, v| m.max(v.abs()));
        }
    }

    /// Adds Mᵀ diag(w) M to the dense row-major cols×cols matrix `out` (lower and upper).
    pub fn add_gram(&self, w: &[f64], out: &mut [f64]) {
        let n = self.cols;
        for r in 0..self.rows {
            let range = self.indptr[r]..self.indptr[r + 1];
            let (idx, val) = (&self.indices[range.clone()], &self.values[range]);
            for (&i, &a) in idx.iter().zip(val) {
                let wa = w[r] * a;
                for (&j, &b) in idx.iter().zip(val) {
                    out[i * n + j] += wa * b;
                }
            }
        }
    }
}

/// The element types [`matmul`] runs on (f32 for the fused kernels, f64 for the ρ policy).
pub(crate) trait GemmScalar: Copy + 'static {
    const ZERO: Self;
    const ONE: Self;
}

impl GemmScalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl GemmScalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// A row-major matrix, possibly read transposed, for [`matmul`].
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T = f32> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a, T> View<'a, T> {
    pub(crate) fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix buffer size");
        View {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    pub(crate) fn t(self) -> Self {
        View {
            transposed: !self.transposed,
            ..self
        }
    }

    /// (logical rows, logical cols, column stride, row stride).
    fn layout(&self) -> (usize, usize, isize, isize) {
        if self.transposed {
            (self.cols, self.rows, self.cols as isize, 1)
        } else {
            (self.rows, self.cols, 1, self.cols as isize)
        }
    }
}

/// dst (m × n, row-major) = lhs · rhs, or dst + lhs · rhs when `accumulate`; one thread.
pub(crate) fn matmul<T: GemmScalar>(dst: &mut [T], lhs: View<T>, rhs: View<T>, accumulate: bool) {
    let (m, k, lhs_cs, lhs_rs) = lhs.layout();
    let (k2, n, rhs_cs, rhs_rs) = rhs.layout();
    assert!(k == k2 && dst.len() == m * n, "matmul shapes");
    // SAFETY: the asserts above make every index the strides reach lie inside its buffer, and
    // `dst` is a distinct mutable buffer.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            if accumulate { T::ONE } else { T::ZERO },
            T::ONE,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// σ_max(W)² of a row-major m×n matrix W by power iteration on WᵀW from the uniform unit
/// vector, until the estimate moves by at most `tol` relatively (or `max_iters`). The estimate
/// approaches from below.
pub fn spectral_norm_squared(w: &[f64], m: usize, n: usize, tol: f64, max_iters: usize) -> f64 {
    let mut v = vec![1.0 / (n as f64).sqrt(); n];
    let mut wv = vec![0.0; m];
    let mut next = vec![0.0; n];
    let mut lambda = 0.0;
    for _ in 0..max_iters {
        for (i, out) in wv.iter_mut().enumerate() {
            *out = (0..n).map(|j| w[i * n + j] * v[j]).sum();
        }
        for (j, out) in next.iter_mut().enumerate() {
            *out = (0..m).map(|i| w[i * n + j] * wv[i]).sum();
        }
        let norm = next.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        next.iter_mut().for_each(|x| *x /= norm);
        let converged = (norm - lambda).abs() <= tol * norm;
        std::mem::swap(&mut v, &mut next);
        lambda = norm;
        if converged {
            break;
        }
    }
    lambda
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_and_rejects_indefinite_matrices() {
        let m = [4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0];
        let c = Cholesky::factor(&m, 3).expect("positive definite");
        let mut b = [1.0, -2.0, 0.5];
        let rhs = b;
        c.solve_in_place(&mut b);
        for i in 0..3 {
            let row: f64 = (0..3).map(|j| m[i * 3 + j] * b[j]).sum();
            assert!((row - rhs[i]).abs() < 1e-12, "row {i}: {row} vs {}", rhs[i]);
        }
        assert!(Cholesky::factor(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
        let inv = c.inverse();
        for i in 0..3 {
            for j in 0..3 {
                let entry: f64 = (0..3).map(|k| m[i * 3 + k] * inv[k * 3 + j]).sum();
                let identity = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (entry - identity).abs() < 1e-12,
                    "(M M⁻¹)[{i},{j}] = {entry}"
                );
            }
        }
    }

    #[test]
    fn csr_products_match_dense_ones() {
        let dense = [1.0, 0.0, 2.0, 0.0, 0.0, 0.0, -3.0, 4.0, 0.0];
        let m = CsrMatrix::from_dense(&dense, 3, 3).unwrap();
        let t = CsrMatrix::from_triplets(
            3,
            3,
            &[
                (2, 1, 4.0),
                (0, 0, 1.0),
                (0, 2, 2.0),
                (2, 0, -1.0),
                (2, 0, -2.0),
            ],
        )
        .unwrap();
        assert_eq!(m, t);
        assert_eq!(m.nnz(), 4);
        let v = [1.0, 2.0, 3.0];
        let mut out = [0.0; 3];
        m.mul_vec(&v, &mut out);
        assert_eq!(out, [7.0, 0.0, 5.0]);
        m.mul_transpose_vec(&v, &mut out);
        assert_eq!(out, [-8.0, 12.0, 2.0]);
        let mut gram = [0.0; 9];
        m.add_gram(&[1.0, 1.0, 2.0], &mut gram);
        // Mᵀ diag(1,1,2) M computed by hand.
        assert_eq!(gram, [19.0, -24.0, 2.0, -24.0, 32.0, 0.0, 2.0, 0.0, 4.0]);
        assert!(CsrMatrix::from_triplets(2, 2, &[(2, 0, 1.0)]).is_err());
        assert!(CsrMatrix::from_dense(&[1.0], 2, 2).is_err());
    }

    /// The fused pass equals `scale` by `first`, then by (left, right), then the two norm
    /// computations, bit for bit (Ruiz equilibration relies on it).
    #[test]
    fn fused_scaling_matches_separate_passes_exactly() {
        let dense = [
            0.3, 0.0, -2.7, 1e-3, 0.0, 5.5, -0.9, 0.0, 7.1, 0.0, 0.2, -4.4,
        ];
        let (left, right, first) = ([0.7, 1.3, 0.11], [2.9, 0.37, 1.01, 0.5], 0.93);
        let mut separate = CsrMatrix::from_dense(&dense, 3, 4).unwrap();
        separate.scale(&[first; 3], &[1.0; 4]);
        separate.scale(&left, &right);
        let (mut rows, mut cols) = ([0.0; 3], [0.0; 4]);
        separate.row_inf_norms(&mut rows);
        separate.column_inf_norms(&mut cols);
        let mut fused = CsrMatrix::from_dense(&dense, 3, 4).unwrap();
        let (mut fused_rows, mut fused_cols) = ([9.0; 3], [9.0; 4]);
        fused.scale_with_norms(first, &left, &right, &mut fused_rows, &mut fused_cols);
        assert_eq!(fused, separate);
        assert_eq!(fused_rows, rows);
        assert_eq!(fused_cols, cols);
    }
}
