//! Fixed-point families (tutorial §6.4, Definition 5): a map g(y; x) whose fixed point
//! y*(x) = g(y*(x); x) is the solution, seen as the minimiser of the residual norm (eq. 45).
//!
//! With R(y) = g(y; x) − y, every family here takes as its objective the *normalised* residual
//!
//! f(y; x) = ‖R(y)‖ / ‖R(0)‖,
//!
//! the residual relative to that of the zero start that the classical iterations use (the
//! context-specific normalisation of NeuralFP's loss, eq. 50), so that instances of different
//! scales weigh alike and f = 1 at y = 0.

use candle_core::Tensor;

use crate::solver::{solve, Anderson, Settings, Status};
use crate::{Error, Result};

/// A fixed-point map g(y; x), batched over rows.
pub trait FixedPointMap: Send + Sync {
    /// g(y; x) for every row, same shape as `y`.
    fn apply(&self, y: &Tensor, x: &Tensor) -> Result<Tensor>;

    /// How many descriptors [`FixedPointMap::coordinate_context`] gives each coordinate (default
    /// 0: none).
    fn coordinate_context_dim(&self) -> usize {
        0
    }

    /// Per-coordinate descriptors of the context, `(rows, dim, coordinate_context_dim())`, or
    /// `None` (the default). A coordinatewise model shares one network over all coordinates and
    /// cannot otherwise tell them apart; for a proximal-gradient map, for example, the
    /// curvature of each coordinate decides how far its step falls short.
    fn coordinate_context(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let _ = x;
        Ok(None)
    }

    /// Whether [`FixedPointMap::apply_with_steps`] is available (default false).
    fn supports_coordinate_steps(&self) -> bool {
        false
    }

    /// Whether [`FixedPointMap::apply_with_steps`] is differentiable in `steps` (default true).
    /// When it is not, parameters that set the steps get no gradient from backpropagation and
    /// must be trained by ES (the hybrid estimator).
    fn coordinate_steps_differentiable(&self) -> bool {
        true
    }

    /// The map with each coordinate's step multiplied by `steps` (positive, same shape as
    /// `y`): for a proximal-gradient map g(y) = prox_{t·h}(y − t∇φ(y)) with a separable h,
    ///
    /// g_D(y) = prox_{D·h}(y − D∇φ(y)),  D = t·diag(steps),
    ///
    /// a diagonally preconditioned map with the same fixed points as g for any positive steps
    /// (at steps = 1 it is g). For the ADMM map of `qp-admm` the steps are the per-constraint
    /// ρᵢ (see [`super::QpAdmm`]). Errors (the default) for a family without such steps.
    fn apply_with_steps(&self, y: &Tensor, x: &Tensor, steps: &Tensor) -> Result<Tensor> {
        let _ = (y, x, steps);
        Err(Error::invalid(
            "this family's fixed-point map has no per-coordinate steps",
        ))
    }
}

impl<T: FixedPointMap + ?Sized> FixedPointMap for &T {
    fn apply(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        (**self).apply(y, x)
    }

    fn coordinate_context_dim(&self) -> usize {
        (**self).coordinate_context_dim()
    }

    fn coordinate_context(&self, x: &Tensor) -> Result<Option<Tensor>> {
        (**self).coordinate_context(x)
    }

    fn supports_coordinate_steps(&self) -> bool {
        (**self).supports_coordinate_steps()
    }

    fn coordinate_steps_differentiable(&self) -> bool {
        (**self).coordinate_steps_differentiable()
    }

    fn apply_with_steps(&self, y: &Tensor, x: &Tensor, steps: &Tensor) -> Result<Tensor> {
        (**self).apply_with_steps(y, x, steps)
    }
}

/// ‖g(y; x) − y‖ per row, `(n,)`: the optimality residual of a fixed-point family.
pub fn fixed_point_residual(map: &dyn FixedPointMap, y: &Tensor, x: &Tensor) -> Result<Tensor> {
    Ok(map.apply(y, x)?.sub(y)?.sqr()?.sum(1)?.sqrt()?)
}

/// Floor of the normalising residual ‖R(0)‖ (an instance already solved at 0).
const NORM_FLOOR: f64 = 1e-12;

/// ‖R(y)‖ / ‖R(0)‖ per row, `(n,)`; differentiable in `y` (the norm is smoothed by 10⁻³⁰
/// under the root so that its gradient stays finite at an exact fixed point).
pub fn normalised_residual(map: &dyn FixedPointMap, y: &Tensor, x: &Tensor) -> Result<Tensor> {
    let r = map.apply(y, x)?.sub(y)?;
    let zero = y.zeros_like()?.detach();
    let r0 = map
        .apply(&zero, x)?
        .detach()
        .sqr()?
        .sum(1)?
        .sqrt()?
        .clamp(NORM_FLOOR, f64::INFINITY)?;
    Ok(r.sqr()?.sum(1)?.affine(1.0, 1e-30)?.sqrt()?.div(&r0)?)
}

/// The fixed point of `map` for every row of `x` from `y0`, in f64: Anderson acceleration
/// (memory 5) until every residual ‖R(y)‖ is at most `tol`, then, for the instances where
/// Anderson stalls (it may on non-smooth maps), the plain iteration from where it stopped.
/// Errors when the residual is still above `tol` after 50,000 plain iterations.
pub fn solve_fixed_point(
    map: &dyn FixedPointMap,
    y0: &Tensor,
    x: &Tensor,
    tol: f64,
) -> Result<Tensor> {
    let x = x.to_dtype(candle_core::DType::F64)?;
    let y0 = y0.to_dtype(candle_core::DType::F64)?;
    let fast = Settings {
        tol,
        max_iters: 2_000,
        max_time: None,
    };
    let aa = solve(
        &Anderson::new(map, 5, 1.0, 1e-10)?,
        &y0,
        &x,
        &fast,
        |_, _| {},
    )?;
    if aa.status == Status::Converged {
        return Ok(aa.y);
    }
    let start = if aa.status == Status::NumericalError {
        y0
    } else {
        aa.y
    };
    let slow = Settings {
        tol,
        max_iters: 50_000,
        max_time: None,
    };
    let plain = solve(
        &Anderson::new(map, 0, 1.0, 0.0)?,
        &start,
        &x,
        &slow,
        |_, _| {},
    )?;
    if plain.status != Status::Converged {
        let worst: f64 = plain.residual.max(0)?.to_scalar()?;
        return Err(Error::invalid(format!(
            "fixed-point solve did not reach residual {tol:e} (worst instance {worst:e} after Anderson and 50,000 plain iterations)"
        )));
    }
    Ok(plain.y)
}
