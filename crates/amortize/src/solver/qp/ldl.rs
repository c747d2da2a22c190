//! Sparse LDLᵀ of a quasi-definite matrix K (OSQP's KKT matrix: n positive and m negative
//! pivots under every symmetric ordering, so no pivoting is needed), in one of two layouts:
//!
//! - **simplicial**: L column by column with its own row indices (the layout of QDLDL, which
//!   OSQP uses); the cheapest when the factor has little dense structure;
//! - **supernodal**: runs of columns with one shared row pattern stored as dense blocks, so
//!   the numeric factorisation runs dense kernels. It halves the factorisation time of
//!   model-predictive-control QPs, whose dense dynamics blocks fill the factor.
//!
//! The approximate-minimum-degree ordering, the symbolic analysis and the numeric
//! factorisation are `faer`'s. The triangular solves, one right-hand side per ADMM
//! iteration, are written here: faer's general solves permute through a workspace and
//! dispatch a matrix product per supernode, which cost 1.4–2.7× more than these loops on the
//! supernodal KKT factors of OSQP's benchmark classes (`bench solvers --part kkt` compares
//! the layouts).
//!
//! The analysis is done once per sparsity pattern; a change of values (ADMM's ρ) redoes only
//! the numeric factor ([`SparseLdl::refactor`]).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::ldlt::factor::LdltRegularization;
use faer::perm::PermRef;
use faer::sparse::linalg::cholesky::{
    factorize_symbolic_cholesky, simplicial, supernodal, CholeskySymbolicParams, SymbolicCholesky,
    SymbolicCholeskyRaw, SymmetricOrdering,
};
use faer::sparse::linalg::{amd, SupernodalThreshold};
use faer::sparse::{SparseColMatRef, SymbolicSparseColMatRef};
use faer::{Par, Side};

use super::admm::KktOrdering;
use super::ordering::{certified_degree_ordering, FactorCount};
use crate::{Error, Result};

/// Which layout [`SparseLdl::analyse`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LdlLayout {
    /// Supernodal when the factor is dense enough to pay ([`SparseLdl::analyse`]).
    Auto,
    Simplicial,
    Supernodal,
}

/// `Auto` considers the supernodal layout when a column of L costs at least this many
/// multiply-adds on average (AMD's count: flops / nnz(L)); below it the columns are too short
/// for dense kernels to win (`bench solvers --part kkt`).
const SUPERNODAL_MIN_FLOPS_PER_ENTRY: f64 = 25.0;

/// … and keeps it only when its dense blocks store at most this many times the entries of the
/// simplicial factor: the padding of merged supernodes costs every solve. On MPC QPs the
/// ratio is 1.3: the supernodal factorisation is 1.9–3× faster at n = 50–200, and its solves
/// are no slower. On Lasso, Huber and SVM QPs it is 2–2.5: solves are 40–100% slower, which
/// the faster factorisation does not repay over a solve's iterations.
const SUPERNODAL_MAX_PADDING: f64 = 1.4;

/// The factor of one sparsity pattern, refactored in place for new values.
pub(super) struct SparseLdl {
    dim: usize,
    /// Whether the ordering is the certified ascending-degree one (module `ordering`).
    by_degree: bool,
    /// Expected number of positive pivots (the rest must be negative).
    positive: usize,
    /// K in the elimination order, in CSC form, as the numeric factorisation reads it: the
    /// upper triangle for the simplicial layout, the lower one for the supernodal layout.
    /// Permuting once here, rather than in every factorisation, saves a pass over K per
    /// change of ρ.
    col_ptr: Vec<usize>,
    row_idx: Vec<usize>,
    entries: Vec<f64>,
    /// Position in `entries` of each entry of the caller's upper triangle.
    position: Vec<usize>,
    symbolic: SymbolicCholesky<usize>,
    /// faer's numeric factor (L and D interleaved, layout per `symbolic`).
    values: Vec<f64>,
    /// 1/Dᵢ in elimination order, from the last factorisation.
    inv_d: Vec<f64>,
    /// Elimination order (AMD's): row `fwd[k]` of K is eliminated k-th; `inv` is its inverse.
    fwd: Vec<usize>,
    inv: Vec<usize>,
    /// Scratch of the numeric factorisation.
    mem: MemBuffer,
    /// The permuted right-hand side, and the supernodes' pattern products.
    x: Vec<f64>,
    tmp: Vec<f64>,
}

/// The error of a failed ordering, analysis or factorisation (also the reduced form's, in
/// `kkt`).
pub(super) fn factor_error(e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("ADMM: the KKT matrix could not be factored: {e}"))
}

/// A factor may hold at most this many times the entries of K's triangle under the cheap
/// ordering for AMD to be skipped: no ordering stores fewer than K's triangle, so the cheap
/// one is then within 20% of AMD's factor size (module `ordering`).
const CHEAP_ORDERING_MAX_FILL: f64 = 1.2;

/// AMD's ordering of the upper-triangle `pattern`, with its count of the factor's entries
/// (diagonal included) and multiply-adds.
fn amd_ordering(
    dim: usize,
    pattern: SymbolicSparseColMatRef<'_, usize>,
) -> Result<(Vec<usize>, Vec<usize>, FactorCount)> {
    let (mut fwd, mut inv) = (vec![0usize; dim], vec![0usize; dim]);
    let mut amd_mem = MemBuffer::try_new(amd::order_maybe_unsorted_scratch::<usize>(
        dim,
        pattern.row_idx().len(),
    ))
    .map_err(|_| factor_error("out of memory for the ordering"))?;
    let count = amd::order_maybe_unsorted(
        &mut fwd,
        &mut inv,
        pattern,
        amd::Control::default(),
        MemStack::new(&mut amd_mem),
    )
    .map_err(factor_error)?;
    let entries = count.n_div + dim as f64;
    Ok((
        fwd,
        inv,
        FactorCount {
            entries,
            flops: count.n_div + count.n_mult_subs_ldl,
        },
    ))
}

impl SparseLdl {
    /// Orders and analyses the `dim`×`dim` upper triangle given in CSC form (`col_ptr`,
    /// `row_idx`: sorted, with every diagonal entry present; `values` its entries) and keeps
    /// the entries for [`SparseLdl::set_entry`] and [`SparseLdl::refactor`]. `positive` is
    /// the number of positive pivots the matrix must have (the factorisation checks it).
    pub(super) fn analyse(
        dim: usize,
        col_ptr: &[usize],
        row_idx: &[usize],
        values: &[f64],
        positive: usize,
        layout: LdlLayout,
        ordering: KktOrdering,
    ) -> Result<Self> {
        let pattern = SymbolicSparseColMatRef::new_checked(dim, dim, col_ptr, None, row_idx);
        // The ordering, with the factor's entries and multiply-adds: the ascending-degree
        // ordering when it is certified near the fewest entries any ordering can give, else
        // AMD's.
        let certified = match ordering {
            KktOrdering::Auto => {
                certified_degree_ordering(dim, col_ptr, row_idx, CHEAP_ORDERING_MAX_FILL)
            }
            KktOrdering::Amd => None,
        };
        let by_degree = certified.is_some();
        let (fwd, inv, count) = match certified {
            Some(certified) => certified,
            None => amd_ordering(dim, pattern)?,
        };
        let (factor_entries, flops) = (count.entries, count.flops);
        let analyse_as = |threshold| {
            let perm = PermRef::new_checked(&fwd, &inv, dim);
            let params = CholeskySymbolicParams {
                supernodal_flop_ratio_threshold: threshold,
                ..Default::default()
            };
            factorize_symbolic_cholesky(
                pattern,
                Side::Upper,
                SymmetricOrdering::Custom(perm),
                params,
            )
            .map_err(factor_error)
        };
        let simplicial = || analyse_as(SupernodalThreshold::FORCE_SIMPLICIAL);
        let supernodal = || analyse_as(SupernodalThreshold::FORCE_SUPERNODAL);
        let symbolic = match layout {
            LdlLayout::Simplicial => simplicial()?,
            LdlLayout::Supernodal => supernodal()?,
            LdlLayout::Auto if flops < SUPERNODAL_MIN_FLOPS_PER_ENTRY * factor_entries => {
                simplicial()?
            }
            LdlLayout::Auto => {
                // The supernodal analysis costs a fraction of the ordering; its padding
                // decides.
                let candidate = supernodal()?;
                if (candidate.len_val() as f64) <= SUPERNODAL_MAX_PADDING * factor_entries {
                    candidate
                } else {
                    simplicial()?
                }
            }
        };
        let scratch = match symbolic.raw() {
            SymbolicCholeskyRaw::Simplicial(_) => {
                simplicial::factorize_simplicial_numeric_ldlt_scratch::<usize, f64>(dim)
            }
            SymbolicCholeskyRaw::Supernodal(s) => {
                supernodal::factorize_supernodal_numeric_ldlt_scratch::<usize, f64>(
                    s,
                    Par::Seq,
                    Default::default(),
                )
            }
        };
        let mem = MemBuffer::try_new(scratch)
            .map_err(|_| factor_error("out of memory for the factorisation's workspace"))?;
        let lower = matches!(symbolic.raw(), SymbolicCholeskyRaw::Supernodal(_));
        let permuted = Permuted::new(col_ptr, row_idx, &inv, lower);
        let mut entries = vec![0.0; values.len()];
        for (&at, &v) in permuted.position.iter().zip(values) {
            entries[at] = v;
        }
        Ok(SparseLdl {
            dim,
            by_degree,
            positive,
            col_ptr: permuted.col_ptr,
            row_idx: permuted.row_idx,
            entries,
            position: permuted.position,
            values: vec![0.0; symbolic.len_val()],
            symbolic,
            inv_d: vec![0.0; dim],
            fwd,
            inv,
            mem,
            x: vec![0.0; dim],
            tmp: vec![0.0; dim],
        })
    }

    /// Whether the certified ascending-degree ordering was used (else AMD's).
    pub(super) fn ordered_by_degree(&self) -> bool {
        self.by_degree
    }

    /// Entries the numeric factor stores (L and D; a supernodal factor's padding included).
    pub(super) fn stored(&self) -> usize {
        self.values.len()
    }

    /// Whether the supernodal layout was chosen.
    pub(super) fn is_supernodal(&self) -> bool {
        matches!(self.symbolic.raw(), SymbolicCholeskyRaw::Supernodal(_))
    }

    /// Sets entry k of the upper triangle given to [`SparseLdl::analyse`] (its index in
    /// that triangle's values) to `value`; [`SparseLdl::refactor`] then factors the new K.
    pub(super) fn set_entry(&mut self, k: usize, value: f64) {
        self.entries[self.position[k]] = value;
    }

    /// Numeric factorisation of the current entries. Fails when a pivot is zero or
    /// non-finite, or when the number of positive pivots differs from the expected one (K
    /// not quasi-definite: a non-convex P or non-finite data).
    pub(super) fn refactor(&mut self) -> Result<()> {
        let pattern = SymbolicSparseColMatRef::new_checked(
            self.dim,
            self.dim,
            &self.col_ptr,
            None,
            &self.row_idx,
        );
        let matrix = SparseColMatRef::new(pattern, &self.entries);
        let stack = MemStack::new(&mut self.mem);
        let regularization = LdltRegularization::default();
        match self.symbolic.raw() {
            SymbolicCholeskyRaw::Simplicial(s) => simplicial::factorize_simplicial_numeric_ldlt(
                &mut self.values,
                matrix,
                regularization,
                s,
                stack,
            ),
            SymbolicCholeskyRaw::Supernodal(s) => supernodal::factorize_supernodal_numeric_ldlt(
                &mut self.values,
                matrix,
                regularization,
                s,
                Par::Seq,
                stack,
                Default::default(),
            ),
        }
        .map_err(factor_error)?;
        self.extract_pivots();
        let mut positive = 0;
        for &d in &self.inv_d {
            if !d.is_finite() || d == 0.0 {
                return Err(factor_error(
                    "a zero or non-finite pivot (non-finite data?)",
                ));
            }
            positive += usize::from(d > 0.0);
        }
        if positive != self.positive {
            return Err(Error::invalid(format!(
                "ADMM: the KKT matrix is not quasi-definite ({positive} positive pivots for {} \
                 variables; non-convex P or non-finite data?)",
                self.positive
            )));
        }
        Ok(())
    }

    /// 1/Dₖ into `inv_d`: the diagonal entry leads each simplicial column and sits on the
    /// diagonal of each supernode's dense block.
    fn extract_pivots(&mut self) {
        match self.symbolic.raw() {
            SymbolicCholeskyRaw::Simplicial(s) => {
                let col_ptr = s.col_ptr();
                for (k, d) in self.inv_d.iter_mut().enumerate() {
                    *d = 1.0 / self.values[col_ptr[k]];
                }
            }
            SymbolicCholeskyRaw::Supernodal(s) => {
                let (begin, end) = (s.supernode_begin(), s.supernode_end());
                let (val_ptr, pattern_len) = (s.col_ptr_for_val(), s.nnz_per_super());
                for k in 0..s.n_supernodes() {
                    let width = end[k] - begin[k];
                    let rows = width + pattern_len[k];
                    let block = &self.values[val_ptr[k]..];
                    for j in 0..width {
                        self.inv_d[begin[k] + j] = 1.0 / block[j * rows + j];
                    }
                }
            }
        }
    }

    /// Solves K x = b in place (b becomes x) with the last factorisation.
    pub(super) fn solve(&mut self, b: &mut [f64]) {
        debug_assert_eq!(b.len(), self.dim);
        let x = &mut self.x;
        for (xk, &row) in x.iter_mut().zip(&self.fwd) {
            *xk = b[row];
        }
        match self.symbolic.raw() {
            SymbolicCholeskyRaw::Simplicial(s) => {
                simplicial_solve(s.col_ptr(), s.row_idx(), &self.values, &self.inv_d, x)
            }
            SymbolicCholeskyRaw::Supernodal(s) => {
                let supernodes = Supernodes {
                    begin: s.supernode_begin(),
                    end: s.supernode_end(),
                    row_ptr: s.col_ptr_for_row_idx(),
                    pattern_len: s.nnz_per_super(),
                    rows: s.row_idx(),
                    val_ptr: s.col_ptr_for_val(),
                };
                supernodal_solve(&supernodes, &self.values, &self.inv_d, x, &mut self.tmp)
            }
        }
        for (bi, &k) in b.iter_mut().zip(&self.inv) {
            *bi = x[k];
        }
    }
}

/// An upper triangle in CSC form under a symmetric permutation.
struct Permuted {
    col_ptr: Vec<usize>,
    row_idx: Vec<usize>,
    /// Where each entry of the original triangle went.
    position: Vec<usize>,
}

impl Permuted {
    /// Entry (i, j), i ≤ j, of the upper triangle (`col_ptr`, `row_idx`) moves to
    /// (inv[i], inv[j]), stored in the lower triangle if `lower`, else in the upper one; rows
    /// are sorted within each column.
    fn new(col_ptr: &[usize], row_idx: &[usize], inv: &[usize], lower: bool) -> Self {
        let dim = col_ptr.len() - 1;
        let place = |i: usize, j: usize| {
            let (a, b) = (inv[i], inv[j]);
            // (row, column)
            match lower == (a >= b) {
                true => (a, b),
                false => (b, a),
            }
        };
        let mut counts = vec![0usize; dim + 1];
        for j in 0..dim {
            for &i in &row_idx[col_ptr[j]..col_ptr[j + 1]] {
                counts[place(i, j).1 + 1] += 1;
            }
        }
        for c in 0..dim {
            counts[c + 1] += counts[c];
        }
        let new_ptr = counts.clone();
        let mut slots: Vec<(usize, usize)> = vec![(0, 0); row_idx.len()];
        for j in 0..dim {
            for (k, &i) in row_idx
                .iter()
                .enumerate()
                .take(col_ptr[j + 1])
                .skip(col_ptr[j])
            {
                let (row, column) = place(i, j);
                slots[counts[column]] = (row, k);
                counts[column] += 1;
            }
        }
        let mut position = vec![0usize; row_idx.len()];
        let mut new_rows = Vec::with_capacity(row_idx.len());
        for c in 0..dim {
            let column = &mut slots[new_ptr[c]..new_ptr[c + 1]];
            column.sort_unstable_by_key(|&(row, _)| row);
            for (offset, &(row, k)) in column.iter().enumerate() {
                position[k] = new_ptr[c] + offset;
                new_rows.push(row);
            }
        }
        Permuted {
            col_ptr: new_ptr,
            row_idx: new_rows,
            position,
        }
    }
}

/// L D Lᵀ x = b in place for a simplicial factor: column k holds Dₖ first, then L's entries
/// below the unit diagonal.
fn simplicial_solve(
    col_ptr: &[usize],
    row_idx: &[usize],
    values: &[f64],
    inv_d: &[f64],
    x: &mut [f64],
) {
    let dim = x.len();
    for k in 0..dim {
        let xk = x[k];
        if xk != 0.0 {
            for p in col_ptr[k] + 1..col_ptr[k + 1] {
                x[row_idx[p]] -= values[p] * xk;
            }
        }
    }
    for (xk, d) in x.iter_mut().zip(inv_d) {
        *xk *= d;
    }
    for k in (0..dim).rev() {
        let mut acc = x[k];
        for p in col_ptr[k] + 1..col_ptr[k + 1] {
            acc -= values[p] * x[row_idx[p]];
        }
        x[k] = acc;
    }
}

/// The layout of a supernodal factor: supernode s covers columns begin[s]..end[s], and its
/// values (from val_ptr[s]) are a column-major block of (width + pattern_len[s]) rows: the
/// dense lower triangle of its diagonal block (Dₖ on the diagonal), then the rows
/// rows[row_ptr[s]..][..pattern_len[s]] below it.
struct Supernodes<'a> {
    begin: &'a [usize],
    end: &'a [usize],
    row_ptr: &'a [usize],
    pattern_len: &'a [usize],
    rows: &'a [usize],
    val_ptr: &'a [usize],
}

/// L D Lᵀ x = b in place for a supernodal factor. Within a supernode the diagonal block is
/// solved column by column with contiguous loops, and its rows below are applied as one
/// dense matrix–vector product gathered to (or scattered from) the pattern, so each row
/// index is touched once per supernode rather than once per column.
fn supernodal_solve(
    s: &Supernodes<'_>,
    values: &[f64],
    inv_d: &[f64],
    x: &mut [f64],
    tmp: &mut [f64],
) {
    let count = s.begin.len();
    for k in 0..count {
        let (start, width, pattern) = (s.begin[k], s.end[k] - s.begin[k], s.pattern(k));
        let rows = width + pattern.len();
        let block = &values[s.val_ptr[k]..s.val_ptr[k] + rows * width];
        let below = &mut tmp[..pattern.len()];
        below.fill(0.0);
        for j in 0..width {
            let column = &block[j * rows..(j + 1) * rows];
            let xj = x[start + j];
            if xj == 0.0 {
                continue;
            }
            for (xi, l) in x[start + j + 1..start + width]
                .iter_mut()
                .zip(&column[j + 1..width])
            {
                *xi -= l * xj;
            }
            for (t, l) in below.iter_mut().zip(&column[width..]) {
                *t += l * xj;
            }
        }
        for (&row, t) in pattern.iter().zip(below.iter()) {
            x[row] -= t;
        }
    }
    for (xk, d) in x.iter_mut().zip(inv_d) {
        *xk *= d;
    }
    for k in (0..count).rev() {
        let (start, width, pattern) = (s.begin[k], s.end[k] - s.begin[k], s.pattern(k));
        let rows = width + pattern.len();
        let block = &values[s.val_ptr[k]..s.val_ptr[k] + rows * width];
        let below = &mut tmp[..pattern.len()];
        for (t, &row) in below.iter_mut().zip(pattern) {
            *t = x[row];
        }
        for j in (0..width).rev() {
            let column = &block[j * rows..(j + 1) * rows];
            let mut acc = 0.0;
            for (l, t) in column[width..].iter().zip(below.iter()) {
                acc += l * t;
            }
            for (l, xi) in column[j + 1..width]
                .iter()
                .zip(&x[start + j + 1..start + width])
            {
                acc += l * xi;
            }
            x[start + j] -= acc;
        }
    }
}

impl Supernodes<'_> {
    /// The rows of supernode k below its diagonal block.
    fn pattern(&self, k: usize) -> &[usize] {
        &self.rows[self.row_ptr[k]..self.row_ptr[k] + self.pattern_len[k]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A random quasi-definite K = [[H, Bᵀ], [B, −E]] (H, E diagonal-dominant positive) as
    /// its dense form and its upper triangle in CSC form; B has dense blocks so that the
    /// supernodal layout has real supernodes.
    fn quasi_definite(
        n: usize,
        m: usize,
        rng: &mut StdRng,
    ) -> (Vec<f64>, Vec<usize>, Vec<usize>, Vec<f64>) {
        let dim = n + m;
        let mut k = vec![0.0; dim * dim];
        for i in 0..n {
            k[i * dim + i] = 2.0 + rng.random::<f64>();
            if i + 1 < n && rng.random::<f64>() < 0.5 {
                let v = rng.random::<f64>() - 0.5;
                k[i * dim + i + 1] = v;
                k[(i + 1) * dim + i] = v;
            }
        }
        for r in 0..m {
            let i = n + r;
            k[i * dim + i] = -(0.5 + rng.random::<f64>());
            // Row r of B touches a block of 4 consecutive variables plus one random one.
            let start = (r * 3) % n.saturating_sub(3).max(1);
            for j in (start..start + 4).chain([rng.random_range(0..n)]) {
                let v = rng.random::<f64>() - 0.5;
                k[i * dim + j] = v;
                k[j * dim + i] = v;
            }
        }
        let (mut col_ptr, mut row_idx, mut values) = (vec![0], vec![], vec![]);
        for j in 0..dim {
            for i in 0..=j {
                if k[i * dim + j] != 0.0 || i == j {
                    row_idx.push(i);
                    values.push(k[i * dim + j]);
                }
            }
            col_ptr.push(row_idx.len());
        }
        (k, col_ptr, row_idx, values)
    }

    #[test]
    fn both_layouts_solve_quasi_definite_systems_and_check_the_inertia() -> Result<()> {
        let mut rng = StdRng::seed_from_u64(3);
        let (n, m) = (30, 40);
        let dim = n + m;
        let (k, col_ptr, row_idx, values) = quasi_definite(n, m, &mut rng);
        let x_true: Vec<f64> = (0..dim).map(|i| (i as f64 * 0.7).sin()).collect();
        let b: Vec<f64> = (0..dim)
            .map(|i| (0..dim).map(|j| k[i * dim + j] * x_true[j]).sum())
            .collect();
        for layout in [
            LdlLayout::Simplicial,
            LdlLayout::Supernodal,
            LdlLayout::Auto,
        ] {
            let mut ldl = SparseLdl::analyse(
                dim,
                &col_ptr,
                &row_idx,
                &values,
                n,
                layout,
                KktOrdering::Amd,
            )?;
            assert_eq!(ldl.is_supernodal(), layout == LdlLayout::Supernodal);
            ldl.refactor()?;
            let mut x = b.clone();
            ldl.solve(&mut x);
            let err = x
                .iter()
                .zip(&x_true)
                .fold(0.0f64, |e, (a, t)| e.max((a - t).abs()));
            assert!(err < 1e-10, "{layout:?}: ‖x − x*‖∞ = {err}");
            // New entries in the (−E) block: the refactored factor solves the new system.
            let mut k2 = k.clone();
            for j in n..dim {
                let diagonal = col_ptr[j + 1] - 1;
                ldl.set_entry(diagonal, 3.0 * values[diagonal]);
                k2[j * dim + j] *= 3.0;
            }
            ldl.refactor()?;
            let mut x: Vec<f64> = (0..dim)
                .map(|i| (0..dim).map(|j| k2[i * dim + j] * x_true[j]).sum())
                .collect();
            ldl.solve(&mut x);
            let err = x
                .iter()
                .zip(&x_true)
                .fold(0.0f64, |e, (a, t)| e.max((a - t).abs()));
            assert!(
                err < 1e-10,
                "{layout:?} after refactoring: ‖x − x*‖∞ = {err}"
            );
            // A wrong inertia (one more positive pivot than the n announced) is refused.
            let last = col_ptr[dim] - 1;
            ldl.set_entry(last, 1.0);
            let e = ldl.refactor().unwrap_err().to_string();
            assert!(e.contains("not quasi-definite"), "{e}");
            // So is a NaN entry.
            ldl.set_entry(last, values[last]);
            ldl.set_entry(0, f64::NAN);
            assert!(ldl.refactor().is_err());
        }
        Ok(())
    }
}
