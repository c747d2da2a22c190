//! Quality along iterations: the mean relative gap (f(yₖ) − f*)/|f*| of every iterate of a
//! semi-amortized model (its layers) and of classical solvers, the tutorial's per-layer view
//! of LISTA against ISTA and FISTA (§6.2).

use candle_core::{DType, Tensor};

use crate::problem::Problem;
use crate::solver::Solver;
use crate::{Error, Result};

/// Mean over instances of (f(yₖ; x) − f*)/|f*| for each iterate yₖ, given f* per instance
/// `(n,)`; instances with f* = 0 use an absolute gap.
pub fn relative_gaps(
    problem: &dyn Problem,
    iterates: &[Tensor],
    x: &Tensor,
    f_star: &Tensor,
) -> Result<Vec<f64>> {
    let scale = f_star.to_dtype(DType::F64)?.abs()?.maximum(1e-12)?;
    gaps(problem, iterates, x, f_star, Some(&scale))
}

/// Mean over instances of the amortization gap f(yₖ; x) − f* for each iterate yₖ, given f*
/// per instance `(n,)`.
pub fn mean_gaps(
    problem: &dyn Problem,
    iterates: &[Tensor],
    x: &Tensor,
    f_star: &Tensor,
) -> Result<Vec<f64>> {
    gaps(problem, iterates, x, f_star, None)
}

/// Mean of (f(yₖ) − f*)/scale per iterate, in f64, each iterate mapped onto Y first.
fn gaps(
    problem: &dyn Problem,
    iterates: &[Tensor],
    x: &Tensor,
    f_star: &Tensor,
    scale: Option<&Tensor>,
) -> Result<Vec<f64>> {
    let x = x.to_dtype(DType::F64)?;
    let f_star = f_star.to_dtype(DType::F64)?;
    iterates
        .iter()
        .map(|y| {
            let f = problem.objective(&problem.to_domain(&y.to_dtype(DType::F64)?)?, &x)?;
            let gap = f.sub(&f_star)?;
            let gap = match scale {
                Some(s) => gap.div(s)?,
                None => gap,
            };
            Ok(gap.mean_all()?.to_scalar::<f64>()?)
        })
        .collect()
}

/// `steps` iterations of `solver` from `y0`, returned as y₀, y₁, …, y_steps (detached).
pub fn solver_iterates<S: Solver>(
    solver: &S,
    y0: &Tensor,
    x: &Tensor,
    steps: usize,
) -> Result<Vec<Tensor>> {
    if y0.dim(0)? != x.dim(0)? {
        return Err(Error::invalid(format!(
            "{} start points for {} contexts",
            y0.dim(0)?,
            x.dim(0)?
        )));
    }
    let mut state = solver.init(y0, x)?;
    let mut out = vec![solver.iterate(&state).clone()];
    for _ in 0..steps {
        state = solver.detach(solver.step(state, x)?);
        out.push(solver.iterate(&state).clone());
    }
    Ok(out)
}

/// NMSE in decibels, 10 log₁₀(Σ‖ŷ − y‖² / Σ‖y‖²) over the batch (the sparse-recovery metric
/// of LISTA papers); −∞ for an exact match, an error when every y is zero.
pub fn nmse_db(y_hat: &Tensor, y: &Tensor) -> Result<f64> {
    let (y_hat, y) = (y_hat.to_dtype(DType::F64)?, y.to_dtype(DType::F64)?);
    if y_hat.dims() != y.dims() {
        return Err(Error::invalid(format!(
            "nmse: shapes {:?} and {:?} differ",
            y_hat.dims(),
            y.dims()
        )));
    }
    let err: f64 = y_hat.sub(&y)?.sqr()?.sum_all()?.to_scalar()?;
    let norm: f64 = y.sqr()?.sum_all()?.to_scalar()?;
    if norm == 0.0 {
        return Err(Error::invalid("nmse: the reference codes are all zero"));
    }
    Ok(10.0 * (err / norm).log10())
}
