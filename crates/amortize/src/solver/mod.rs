//! Classical solvers, batched over instances: baselines, label makers, fallbacks, and the
//! steps that semi-amortized models unroll.
//!
//! Every solver is a state machine — [`Solver::init`] from a starting point, [`Solver::step`]
//! one iteration, [`Solver::residual`] the optimality measure that certifies an answer — and
//! one driver, [`solve`], owns tolerance, iteration and time limits and progress callbacks.
//! Running out of iterations or time is a [`Status`], never an error. Steps are tensor ops, so
//! a model can differentiate through them.

mod anderson;
mod cem;
mod fused_lasso;
mod gradient;
mod lbfgs;
mod named;
mod newton;
mod proximal;
pub mod qp;

pub use crate::problem::FixedPointMap;
pub use anderson::{anderson_update, anderson_weights, stack_history, Anderson, AndersonState};
pub use cem::{CemState, CrossEntropyMethod};
pub use fused_lasso::{FusedLasso, FusedLassoReport};
pub use gradient::{AdamSolver, GradientDescent, StepRule};
pub use lbfgs::{Lbfgs, LbfgsState};
pub use named::{iterates_in_domain, solve_named, SolverOptions, SOLVER_NAMES};
pub use newton::Newton;
pub use proximal::{ProxOperator, ProxState, ProximalGradient};
pub use qp::{Admm, AdmmSettings, QpProblem, QpSolution, QpStatus};

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How a solve ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every instance's residual reached the tolerance.
    Converged,
    /// The iteration budget ran out first.
    MaxIterations,
    /// The time budget ran out first.
    MaxTime,
    /// An iterate or residual became NaN or infinite.
    NumericalError,
}

/// The result of [`solve`].
#[derive(Debug, Clone)]
pub struct Solution {
    /// The final iterate, `(n, d)`.
    pub y: Tensor,
    /// The objective at `y`, `(n,)`.
    pub value: Tensor,
    /// How the solve ended.
    pub status: Status,
    /// Iterations taken.
    pub iters: usize,
    /// Wall-clock seconds.
    pub elapsed: f64,
    /// The optimality residual at `y`, `(n,)`.
    pub residual: Tensor,
}

/// Limits of a solve; every field has a documented default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Stop when every instance's residual is at most this (default 1e-6).
    pub tol: f64,
    /// Iteration budget (default 1000).
    pub max_iters: usize,
    /// Time budget in seconds (default none).
    pub max_time: Option<f64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tol: 1e-6,
            max_iters: 1000,
            max_time: None,
        }
    }
}

/// An iterative solver over batches of instances `x` with iterates `y`.
pub trait Solver {
    /// The solver's state between iterations (iterate plus whatever it carries).
    type State;

    /// A short name.
    fn name(&self) -> &'static str;

    /// The state at the starting point `y0` `(n, d)`.
    fn init(&self, y0: &Tensor, x: &Tensor) -> Result<Self::State>;

    /// One iteration.
    fn step(&self, state: Self::State, x: &Tensor) -> Result<Self::State>;

    /// The current iterate `(n, d)`.
    fn iterate<'s>(&self, state: &'s Self::State) -> &'s Tensor;

    /// The state cut from the autodiff graph. Steps keep their graph so that models can
    /// unroll them; a plain solve detaches after every step, or each iterate would chain the
    /// graphs of all earlier steps (second-order mode keeps gradients' graphs too).
    fn detach(&self, state: Self::State) -> Self::State;

    /// The objective at the current iterate, `(n,)`.
    fn value(&self, state: &Self::State, x: &Tensor) -> Result<Tensor>;

    /// The optimality residual at the current iterate, `(n,)`: zero exactly at solutions.
    fn residual(&self, state: &Self::State, x: &Tensor) -> Result<Tensor>;
}

fn max_f64(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.max(0)?.to_scalar()?)
}

/// Runs `solver` from `y0` on instances `x` until every residual is at most `settings.tol` or a
/// budget runs out. `observe(iteration, max residual)` sees every iterate, the start (0) included.
pub fn solve<S: Solver>(
    solver: &S,
    y0: &Tensor,
    x: &Tensor,
    settings: &Settings,
    mut observe: impl FnMut(usize, f64),
) -> Result<Solution> {
    if !(settings.tol.is_finite() && settings.tol >= 0.0) {
        return Err(Error::invalid(format!(
            "solver tolerance must be finite and >= 0, got {}",
            settings.tol
        )));
    }
    let start = Instant::now();
    let mut state = solver.init(y0, x)?;
    let mut iters = 0;
    let status = loop {
        let r = max_f64(&solver.residual(&state, x)?)?;
        observe(iters, r);
        if !r.is_finite() {
            break Status::NumericalError;
        }
        if r <= settings.tol {
            break Status::Converged;
        }
        if iters >= settings.max_iters {
            break Status::MaxIterations;
        }
        if settings
            .max_time
            .is_some_and(|t| start.elapsed().as_secs_f64() >= t)
        {
            break Status::MaxTime;
        }
        state = solver.detach(solver.step(state, x)?);
        iters += 1;
    };
    let residual = solver.residual(&state, x)?;
    Ok(Solution {
        y: solver.iterate(&state).clone(),
        value: solver.value(&state, x)?,
        status,
        iters,
        elapsed: start.elapsed().as_secs_f64(),
        residual,
    })
}
