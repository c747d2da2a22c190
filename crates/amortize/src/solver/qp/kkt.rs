//! The linear system of one ADMM iteration (tutorial eq. 58; Stellato et al. 2020, eq. 24) in
//! OSQP's quasi-definite form
//!
//! ⎡P + σI    Aᵀ   ⎤ ⎡ỹ⎤   ⎡σyᵗ − q       ⎤
//! ⎣  A     −R⁻¹  ⎦ ⎣ν⎦ = ⎣zᵗ − R⁻¹λᵗ   ⎦,   R = diag(ρ),
//!
//! whose solution gives z̃ = Aỹ = zᵗ + R⁻¹(ν − λᵗ). Two ways to solve it, chosen per QP by the
//! cost of a solve:
//! - **sparse**: the whole (n+m)×(n+m) matrix by a sparse LDLᵀ without pivoting (module
//!   `ldl`: simplicial like OSQP's QDLDL, or supernodal when the factor is dense enough)
//!   under an approximate-minimum-degree ordering. σ > 0 and ρ > 0 make the matrix
//!   quasi-definite, so the factor exists for any symmetric ordering, with n positive and m
//!   negative pivots. A change of ρ touches only the last m diagonal entries: the ordering and
//!   symbolic factor are computed once and only the numeric factor is redone.
//! - **reduced**: eliminating ν gives (P + σI + AᵀRA)ỹ = σyᵗ − q + Aᵀ(Rzᵗ − λᵗ), dense n×n,
//!   with z̃ = Aỹ; a dense Cholesky factor.
//!
//! The sparse form wins by orders of magnitude on structured classes (Lasso, Huber, SVM),
//! whose auxiliary variables touch few rows; the reduced one on QPs whose P or A is dense
//! enough to fill the factor anyway (OSQP's random QPs, where it is about twice as fast).
//! `KktForm::Auto` picks the reduced form exactly when P is dense (`DENSE_P_SHARE`): deciding
//! from the symbolic factor instead would cost as much as a whole solve on random QPs.

use super::admm::{KktForm, KktOrdering};
use super::ldl::{factor_error, LdlLayout, SparseLdl};
use crate::linalg::{Cholesky, CsrMatrix};
use crate::Result;

/// `Auto` uses the reduced form when P has at least this share of its n² entries: the n×n
/// block is then dense in either form, and the dense loops of the reduced form run about
/// twice as fast as the sparse factor's indexed ones (measured on OSQP's random and
/// equality-constrained QPs). With a sparse P the auxiliary variables of structured classes
/// keep the sparse factor far smaller than n² (60× faster on Huber fitting at n = 200).
const DENSE_P_SHARE: f64 = 0.25;

/// Whether P has at least [`DENSE_P_SHARE`] of its n² entries.
fn is_dense(p: &CsrMatrix) -> bool {
    let n = p.rows();
    p.nnz() as f64 >= DENSE_P_SHARE * (n * n) as f64
}

/// The factored KKT system of one QP for the current ρ.
pub(super) struct Kkt {
    n: usize,
    sigma: f64,
    form: Form,
    /// Whether the numeric factor matches the current ρ (false after [`Kkt::new`] and after a
    /// failed [`Kkt::set_rho`], until one succeeds).
    factored: bool,
}

enum Form {
    Sparse {
        factor: Box<SparseLdl>,
        /// Index of entry (n+i, n+i), −1/ρᵢ, among the assembled upper triangle's entries.
        rho_entries: Vec<usize>,
        /// The right-hand side and solution (ỹ, ν), n + m.
        work: Vec<f64>,
    },
    Reduced {
        /// None until the first factorisation.
        factor: Option<Cholesky>,
        /// P as a dense row-major matrix, the start of every refactorisation.
        p_dense: Vec<f64>,
        /// ρ∘z − λ (m).
        work: Vec<f64>,
    },
}

/// The upper triangle of the quasi-definite matrix in CSC form.
struct Assembled {
    col_ptr: Vec<usize>,
    row_idx: Vec<usize>,
    values: Vec<f64>,
    /// Positions of the −1/ρᵢ entries in `values`.
    rho_entries: Vec<usize>,
}

/// The upper triangle of the quasi-definite matrix in CSC form (sorted row indices), with −1
/// in place of every −1/ρᵢ (set by [`Kkt::set_rho`]).
fn assemble(p: &CsrMatrix, a: &CsrMatrix, sigma: f64) -> Assembled {
    let (n, m) = (p.rows(), a.rows());
    let dim = n + m;
    let mut colptr = Vec::with_capacity(dim + 1);
    let mut rowval = Vec::with_capacity(p.nnz() / 2 + n + a.nnz() + m);
    let mut nzval = Vec::with_capacity(rowval.capacity());
    let mut column: Vec<(usize, f64)> = Vec::new();
    colptr.push(0);
    // Columns 0..n: the upper triangle of P + σI (P is symmetric: its row j is column j).
    for j in 0..n {
        column.clear();
        column.extend(p.row(j).filter(|&(i, _)| i < j));
        let diagonal: f64 = p.row(j).filter(|&(i, _)| i == j).map(|(_, v)| v).sum();
        column.sort_unstable_by_key(|&(i, _)| i);
        for &(i, v) in &column {
            rowval.push(i);
            nzval.push(v);
        }
        rowval.push(j);
        nzval.push(diagonal + sigma);
        colptr.push(rowval.len());
    }
    // Columns n..n+m: row i of A above the diagonal entry −1/ρᵢ.
    let mut rho_entries = Vec::with_capacity(m);
    for i in 0..m {
        column.clear();
        column.extend(a.row(i));
        column.sort_unstable_by_key(|&(j, _)| j);
        for &(j, v) in &column {
            rowval.push(j);
            nzval.push(v);
        }
        rho_entries.push(rowval.len());
        rowval.push(n + i);
        nzval.push(-1.0);
        colptr.push(rowval.len());
    }
    debug_assert_eq!(colptr.len(), dim + 1);
    Assembled {
        col_ptr: colptr,
        row_idx: rowval,
        values: nzval,
        rho_entries,
    }
}

impl Kkt {
    /// Analyses the system for P (n×n, both triangles stored), A (m×n) and σ: picks the form
    /// (`Auto`: reduced exactly when P is dense), assembles, orders and analyses it. This is
    /// the part of the set-up that does not depend on ρ; the numeric factor comes from the
    /// first [`Kkt::set_rho`], which must come before the first solve.
    pub(super) fn new(
        p: &CsrMatrix,
        a: &CsrMatrix,
        sigma: f64,
        choice: KktForm,
        ordering: KktOrdering,
    ) -> Result<Self> {
        let (n, m) = (p.rows(), a.rows());
        let layout = match choice {
            KktForm::Auto if is_dense(p) => None,
            KktForm::Auto | KktForm::Sparse => Some(LdlLayout::Auto),
            KktForm::SparseSimplicial => Some(LdlLayout::Simplicial),
            KktForm::SparseSupernodal => Some(LdlLayout::Supernodal),
            KktForm::Reduced => None,
        };
        let form = if let Some(layout) = layout {
            let matrix = assemble(p, a, sigma);
            let factor = SparseLdl::analyse(
                n + m,
                &matrix.col_ptr,
                &matrix.row_idx,
                &matrix.values,
                n,
                layout,
                ordering,
            )?;
            Form::Sparse {
                factor: Box::new(factor),
                rho_entries: matrix.rho_entries,
                work: vec![0.0; n + m],
            }
        } else {
            Form::Reduced {
                factor: None,
                p_dense: p.to_dense(),
                work: vec![0.0; m],
            }
        };
        Ok(Kkt {
            n,
            sigma,
            form,
            factored: false,
        })
    }

    /// Whether the sparse form was chosen.
    pub(super) fn is_sparse(&self) -> bool {
        matches!(self.form, Form::Sparse { .. })
    }

    /// Whether the sparse form uses the supernodal layout.
    pub(super) fn is_supernodal(&self) -> bool {
        matches!(&self.form, Form::Sparse { factor, .. } if factor.is_supernodal())
    }

    /// Whether the sparse form's factor is ordered by degree (else by AMD), and the entries it
    /// stores; `None` for the reduced form.
    pub(super) fn ordering(&self) -> Option<(bool, usize)> {
        match &self.form {
            Form::Sparse { factor, .. } => Some((factor.ordered_by_degree(), factor.stored())),
            Form::Reduced { .. } => None,
        }
    }

    /// Refactors for new step sizes ρ (same length as at construction).
    pub(super) fn set_rho(&mut self, a: &CsrMatrix, rho: &[f64]) -> Result<()> {
        // Not factored until the new factor succeeds: a failure leaves no usable one.
        self.factored = false;
        match &mut self.form {
            Form::Sparse {
                factor,
                rho_entries,
                ..
            } => {
                debug_assert_eq!(rho.len(), rho_entries.len());
                for (&entry, r) in rho_entries.iter().zip(rho) {
                    factor.set_entry(entry, -1.0 / r);
                }
                // Quasi-definiteness (n positive pivots) is checked by the factor; the
                // reduced form's Cholesky checks its own pivots.
                factor.refactor()?;
            }
            Form::Reduced {
                factor, p_dense, ..
            } => *factor = Some(reduced_factor(p_dense, a, self.sigma, rho)?),
        }
        self.factored = true;
        Ok(())
    }

    /// Whether the numeric factor is current (see [`Kkt::new`]).
    pub(super) fn is_factored(&self) -> bool {
        self.factored
    }

    /// ỹ and z̃ = Aỹ of one ADMM iteration from (yᵗ, zᵗ, λᵗ). Needs a current factor
    /// ([`Kkt::is_factored`]); the workspace guarantees it.
    pub(super) fn solve(
        &mut self,
        a: &CsrMatrix,
        q: &[f64],
        rho: &[f64],
        (y, z, lambda): (&[f64], &[f64], &[f64]),
        y_tilde: &mut [f64],
        z_tilde: &mut [f64],
    ) {
        let (n, sigma) = (self.n, self.sigma);
        match &mut self.form {
            Form::Sparse { factor, work, .. } => {
                for j in 0..n {
                    work[j] = sigma * y[j] - q[j];
                }
                for (i, w) in work[n..].iter_mut().enumerate() {
                    *w = z[i] - lambda[i] / rho[i];
                }
                factor.solve(work);
                y_tilde.copy_from_slice(&work[..n]);
                for (i, zt) in z_tilde.iter_mut().enumerate() {
                    *zt = z[i] + (work[n + i] - lambda[i]) / rho[i];
                }
            }
            Form::Reduced { factor, work, .. } => {
                let Some(factor) = factor else {
                    debug_assert!(false, "KKT solve before the first factorisation");
                    return;
                };
                for (i, w) in work.iter_mut().enumerate() {
                    *w = rho[i] * z[i] - lambda[i];
                }
                a.mul_transpose_vec(work, y_tilde);
                for j in 0..n {
                    y_tilde[j] += sigma * y[j] - q[j];
                }
                factor.solve_in_place(y_tilde);
                a.mul_vec(y_tilde, z_tilde);
            }
        }
    }
}

/// The Cholesky factor of P + σI + Aᵀdiag(ρ)A.
fn reduced_factor(p_dense: &[f64], a: &CsrMatrix, sigma: f64, rho: &[f64]) -> Result<Cholesky> {
    let n = a.cols();
    let mut k = p_dense.to_vec();
    for j in 0..n {
        k[j * n + j] += sigma;
    }
    a.add_gram(rho, &mut k);
    Cholesky::factor(&k, n)
        .ok_or_else(|| factor_error("a non-positive pivot (non-convex P or non-finite data?)"))
}

/// Whether the symmetric P (both triangles stored) plus `shift`·I is positive definite: a dense
/// Cholesky when P is dense, else a sparse LDLᵀ (all pivots must be positive).
pub(super) fn shifted_is_positive_definite(p: &CsrMatrix, shift: f64) -> bool {
    let n = p.rows();
    if is_dense(p) {
        let mut dense = p.to_dense();
        for i in 0..n {
            dense[i * n + i] += shift;
        }
        return Cholesky::factor(&dense, n).is_some();
    }
    let Ok(no_rows) = CsrMatrix::from_triplets(0, n, &[]) else {
        return false;
    };
    let matrix = assemble(p, &no_rows, shift);
    // All n pivots positive: the factor checks the count, and rejects zero or non-finite ones.
    SparseLdl::analyse(
        n,
        &matrix.col_ptr,
        &matrix.row_idx,
        &matrix.values,
        n,
        LdlLayout::Simplicial,
        KktOrdering::Auto,
    )
    .and_then(|mut factor| factor.refactor())
    .is_ok()
}
