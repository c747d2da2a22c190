//! Newton's method for small dense problems, with Hessians from autodiff.

use candle_core::{DType, Tensor, Var};

use super::Solver;
use crate::linalg::Cholesky;
use crate::problem::Problem;
use crate::{Error, Result};

/// # Newton's method
/// y ← y − (H + λI)⁻¹ ∇ per instance, with ∇ = ∇_y f(π_Y(y); x) and H its Jacobian (the
/// Hessian), obtained column by column as ∂(∇ · e_k)/∂y by reverse-mode autodiff (second-order
/// mode, see [`crate::autodiff`]). λ ≥ 0 damps the step; an instance whose H + λI is not
/// positive definite takes a gradient step of length `fallback_lr` instead.
///
/// ## Requires
/// Small solution dimensions (d backward passes per step, a d×d solve per instance).
///
/// ## Optimality residual
/// ‖∇_y f(π_Y(y); x)‖ per instance.
pub struct Newton<'a> {
    problem: &'a dyn Problem,
    damping: f64,
    fallback_lr: f64,
}

impl<'a> Newton<'a> {
    /// Newton on `problem` with damping λ ≥ 0 and the gradient-step fallback rate.
    pub fn new(problem: &'a dyn Problem, damping: f64, fallback_lr: f64) -> Result<Self> {
        if !(damping.is_finite() && damping >= 0.0 && fallback_lr.is_finite() && fallback_lr > 0.0)
        {
            return Err(Error::invalid(format!(
                "newton: need damping >= 0 and fallback_lr > 0, got {damping}, {fallback_lr}"
            )));
        }
        Ok(Newton {
            problem,
            damping,
            fallback_lr,
        })
    }

    /// ∇ `(n, d)` and H `(n, d, d)` (row-major per instance) at `y`, as f64 vectors.
    pub fn gradient_and_hessian(&self, y: &Tensor, x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
        let (n, d) = y.dims2()?;
        let probe = Var::zeros(y.shape(), y.dtype(), y.device())?;
        let g = self
            .problem
            .domain_gradient(&y.broadcast_add(probe.as_tensor())?, x)?;
        let mut h = vec![0.0; n * d * d];
        for k in 0..d {
            let column = g.narrow(1, k, 1)?.sum_all()?;
            let grads = column.backward()?;
            let dk: Vec<f64> = match grads.get(probe.as_tensor()) {
                Some(t) => t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?,
                None => vec![0.0; n * d],
            };
            for i in 0..n {
                for j in 0..d {
                    h[i * d * d + k * d + j] = dk[i * d + j];
                }
            }
        }
        let g: Vec<f64> = g.detach().to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        Ok((g, h))
    }
}

impl Solver for Newton<'_> {
    type State = Tensor;

    fn name(&self) -> &'static str {
        "newton"
    }

    fn init(&self, y0: &Tensor, _x: &Tensor) -> Result<Tensor> {
        Ok(y0.clone())
    }

    fn step(&self, y: Tensor, x: &Tensor) -> Result<Tensor> {
        let (n, d) = y.dims2()?;
        let (g, mut h) = self.gradient_and_hessian(&y, x)?;
        let mut step = vec![0.0; n * d];
        for i in 0..n {
            let hi = &mut h[i * d * d..(i + 1) * d * d];
            for k in 0..d {
                hi[k * d + k] += self.damping;
            }
            // Autodiff Hessians are symmetric up to rounding: factor their symmetric part.
            for r in 0..d {
                for c in 0..r {
                    hi[r * d + c] = 0.5 * (hi[r * d + c] + hi[c * d + r]);
                }
            }
            let gi = &g[i * d..(i + 1) * d];
            let si = &mut step[i * d..(i + 1) * d];
            si.copy_from_slice(gi);
            match Cholesky::factor(hi, d) {
                Some(c) => c.solve_in_place(si),
                None => si.iter_mut().for_each(|v| *v *= self.fallback_lr),
            }
        }
        let step = Tensor::from_vec(step, (n, d), y.device())?.to_dtype(y.dtype())?;
        Ok(y.sub(&step)?)
    }

    fn iterate<'s>(&self, y: &'s Tensor) -> &'s Tensor {
        y
    }

    fn detach(&self, y: Tensor) -> Tensor {
        y.detach()
    }

    fn value(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.problem.objective(&self.problem.to_domain(y)?, x)
    }

    fn residual(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.problem.residual(y, x)
    }
}
