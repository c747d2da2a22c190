//! Problem families: f, Y, X and p(x) of the tutorial's Definition 1.
//!
//! A family is the parametric problem y*(x) ∈ argmin_{y ∈ Y} f(y; x) (tutorial eq. 1) together
//! with the distribution p(x) its contexts come from. Everything is batched: contexts are
//! `(n, context_dim)` tensors and solutions `(n, solution_dim)` tensors, and the objective
//! returns one value per row.

mod elastic_net;
mod fixed_point;
mod fixed_point_toy;
mod lasso;
mod least_squares;
mod qp_admm;
mod quadratic;
mod sinusoid;
mod sphere;
mod toy1d;

pub use elastic_net::{ElasticNetConfig, ElasticNetIsta};
pub use fixed_point::{
    fixed_point_residual, normalised_residual, solve_fixed_point, FixedPointMap,
};
pub use fixed_point_toy::{FixedPointToy, FixedPointToyConfig};
pub use lasso::{Lasso, LassoConfig, Signals};
pub use least_squares::LeastSquares;
pub use qp_admm::{QpAdmm, QpAdmmConfig};
pub use quadratic::{Quadratic, QuadraticConfig};
pub use sinusoid::{Sinusoid, SinusoidConfig};
pub use sphere::{
    fibonacci_sphere, soft_min, AlphaDistribution, Sphere, SphereConfig, MAX_COMPONENTS,
};
pub use toy1d::{Toy1d, Toy1dConfig};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::{autodiff, Error, Result};

/// A family of optimization problems y*(x) ∈ argmin_{y∈Y} f(y; x) with contexts x ~ p(x).
///
/// Only [`Problem::objective`] and the sampler are required; gradients come from autodiff
/// unless a closed form overrides [`Problem::gradient`] (the tests then check the two agree).
pub trait Problem: Send + Sync {
    /// The family's name, as used in configs and checkpoints.
    fn name(&self) -> &str;

    /// Dimension of a context x.
    fn context_dim(&self) -> usize;

    /// Dimension of a solution y.
    fn solution_dim(&self) -> usize;

    /// Draws `n` contexts x ~ p(x) as an `(n, context_dim)` tensor, using only `rng`.
    fn sample_contexts(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor>;

    /// The objective f(y; x) for each row: `(n, solution_dim) × (n, context_dim) → (n,)`.
    ///
    /// `y` is a point of the domain Y (use [`Problem::to_domain`] first on free outputs).
    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor>;

    /// ∇_y f(y; x) for each row, `(n, solution_dim)`. Default: reverse-mode autodiff of
    /// [`Problem::objective`], differentiable again when second-order autodiff is on.
    fn gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        autodiff::grad_at(y, |y| Ok(self.objective(y, x)?.sum_all()?))
    }

    /// The map π_Y from R^n onto the domain Y (tutorial eq. 83–84 for the sphere); identity by
    /// default. Must be differentiable: models compose their output with it.
    fn to_domain(&self, y: &Tensor) -> Result<Tensor> {
        Ok(y.clone())
    }

    /// The exact (or best available) solution y*(x), used for labels and the amortization gap.
    /// `None` when the family has no solver.
    fn solve_exact(&self, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// ∇_y of the unconstrained objective f(π_Y(y); x) of tutorial eq. 83, for free y ∈ Rⁿ:
    /// what a from-scratch solver over Rⁿ descends. Default: autodiff.
    fn domain_gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        autodiff::grad_at(y, |y| {
            Ok(self.objective(&self.to_domain(y)?, x)?.sum_all()?)
        })
    }

    /// An optimality residual per row, zero exactly at stationary points of f ∘ π_Y:
    /// ‖∇_y f(π_Y(y); x)‖. For a y on the sphere this is the norm of the Riemannian
    /// (tangential) gradient. Used to certify an answer before trusting it.
    fn residual(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let g = self.domain_gradient(y, x)?;
        Ok(g.sqr()?.sum(1)?.sqrt()?)
    }

    /// `n` held-out contexts for evaluation. Default: [`Problem::sample_contexts`] (a family
    /// with an infinite p(x) needs no split); a family drawing from a finite data set returns
    /// contexts from a part that training never sees.
    fn sample_held_out(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        self.sample_contexts(n, rng, device)
    }

    /// `n` contexts with the solutions that generated them (`(n, context_dim)`,
    /// `(n, solution_dim)`), for families whose sampler plants a solution (sparse recovery);
    /// `None` otherwise. Training with `data = generated` regresses onto these.
    fn sample_with_solutions(
        &self,
        _n: usize,
        _rng: &mut StdRng,
        _device: &Device,
    ) -> Result<Option<(Tensor, Tensor)>> {
        Ok(None)
    }

    /// The loss of solutions `y` on the held-out part of each context, `(n,)`: the query set of
    /// a meta-learning task, on which the adaptation is judged (the meta-loss,
    /// [`crate::loss::Loss::Query`]). `None` for families whose contexts have no such part.
    fn query_objective(&self, _y: &Tensor, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The support set of each context as (inputs `(n, K, d_in)`, targets `(n, K, d_out)`),
    /// for models that read a meta-learning task's shots as a set (hypernetworks); `None` for
    /// other families.
    fn support_set(&self, _x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        Ok(None)
    }

    /// A reasonable starting solution `(1, solution_dim)` drawn from `rng` (a freshly
    /// initialised learner for meta-learning), where all-equal coordinates would be a poor
    /// start; `None` otherwise.
    fn default_solution(&self, _rng: &mut StdRng, _device: &Device) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The family as a [`Lasso`] (dictionary, α, L), for sparse-coding models such as LISTA
    /// that start from ISTA's weights; `None` for other families.
    fn as_lasso(&self) -> Option<&Lasso> {
        None
    }

    /// The fixed-point map g(y; x) of a fixed-point family (tutorial §6.4), whose objective is
    /// then the normalised residual; `None` for other families. NeuralFP and HyperAA unroll it.
    fn fixed_point_map(&self) -> Option<&dyn FixedPointMap> {
        None
    }

    /// A hand-written CPU f32 evaluation of f(π_Y(raw); x) and its gradient, used by the fused
    /// training path ([`crate::model::FusedMlp`]); `None` when the family has none.
    fn cpu_objective(&self) -> Option<&dyn CpuObjective> {
        None
    }

    /// Checks a batch of contexts: a 2-D tensor of `context_dim` columns with finite entries.
    fn check_contexts(&self, x: &Tensor) -> Result<()> {
        check_matrix(x, self.context_dim(), "contexts")
    }
}

/// The objective of a problem composed with its domain map, on plain f32 rows, for the fused
/// CPU training path (no tensors, no allocation per call).
pub trait CpuObjective: Sync {
    /// For `n` rows of free outputs `raw` `(n, solution_dim)` and contexts `x`
    /// `(n, context_dim)`, writes ∇_raw f(π_Y(raw); x) into `grad` (same shape as `raw`) and
    /// returns Σ_rows f(π_Y(raw); x).
    fn value_and_grad(&self, raw: &[f32], x: &[f32], n: usize, grad: &mut [f32]) -> f64;
}

/// Checks that `t` is `(n, cols)` with finite entries; `what` names it in the error.
pub fn check_matrix(t: &Tensor, cols: usize, what: &str) -> Result<()> {
    let dims = t.dims();
    if dims.len() != 2 || dims[1] != cols {
        return Err(Error::invalid(format!(
            "{what} must have shape (n, {cols}), got {:?}",
            dims
        )));
    }
    let values: Vec<f64> = t
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "{what} row {} column {} is {} (NaN or infinite values are not allowed)",
            i / cols.max(1),
            i % cols.max(1),
            values[i]
        )));
    }
    Ok(())
}

/// The configuration of a built-in problem family, as written in experiment TOML files
/// (`[problem] name = "sphere"` plus that family's fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum ProblemConfig {
    /// [`Sphere`]: c-convex functions on S² (tutorial §7).
    Sphere(SphereConfig),
    /// [`Toy1d`]: the one-dimensional landscape of the tutorial's Figure 1.
    Toy1d(Toy1dConfig),
    /// [`Quadratic`]: strongly convex quadratics with a closed-form solution.
    Quadratic(QuadraticConfig),
    /// [`Lasso`]: sparse coding, ½‖x − Wy‖² + α‖y‖₁ (tutorial §6.2).
    Lasso(LassoConfig),
    /// [`Sinusoid`]: few-shot sinusoid regression, y = a learner's parameters (§6.3).
    Sinusoid(SinusoidConfig),
    /// [`ElasticNetIsta`]: the ISTA map of elastic-net regression, a fixed-point family (§6.4).
    #[serde(rename = "elastic-net-ista")]
    ElasticNetIsta(ElasticNetConfig),
    /// [`FixedPointToy`]: the one-dimensional map of Figure 9, a fixed-point family (§6.4).
    #[serde(rename = "fixed-point-toy")]
    FixedPointToy(FixedPointToyConfig),
    /// [`QpAdmm`]: the ADMM iteration on QPs of an OSQP class, a fixed-point family (§6.4).
    #[serde(rename = "qp-admm")]
    QpAdmm(QpAdmmConfig),
}

impl ProblemConfig {
    /// The names of the built-in families, for `amortize list`.
    pub const NAMES: [&'static str; 8] = [
        "sphere",
        "toy1d",
        "quadratic",
        "lasso",
        "sinusoid",
        "elastic-net-ista",
        "fixed-point-toy",
        "qp-admm",
    ];

    /// The family's name.
    pub fn name(&self) -> &'static str {
        match self {
            ProblemConfig::Sphere(_) => "sphere",
            ProblemConfig::Toy1d(_) => "toy1d",
            ProblemConfig::Quadratic(_) => "quadratic",
            ProblemConfig::Lasso(_) => "lasso",
            ProblemConfig::Sinusoid(_) => "sinusoid",
            ProblemConfig::ElasticNetIsta(_) => "elastic-net-ista",
            ProblemConfig::FixedPointToy(_) => "fixed-point-toy",
            ProblemConfig::QpAdmm(_) => "qp-admm",
        }
    }

    /// The default configuration of a family by name.
    pub fn default_for(name: &str) -> Result<Self> {
        Ok(match name {
            "sphere" => ProblemConfig::Sphere(SphereConfig::default()),
            "toy1d" => ProblemConfig::Toy1d(Toy1dConfig::default()),
            "quadratic" => ProblemConfig::Quadratic(QuadraticConfig::default()),
            "lasso" => ProblemConfig::Lasso(LassoConfig::default()),
            "sparse-recovery" => ProblemConfig::Lasso(LassoConfig::sparse_recovery()),
            "sinusoid" => ProblemConfig::Sinusoid(SinusoidConfig::default()),
            "elastic-net-ista" => ProblemConfig::ElasticNetIsta(ElasticNetConfig::default()),
            "fixed-point-toy" => ProblemConfig::FixedPointToy(FixedPointToyConfig::default()),
            "qp-admm" => ProblemConfig::QpAdmm(QpAdmmConfig::default()),
            other => {
                return Err(Error::invalid(format!(
                    "unknown problem '{other}' (known: {})",
                    Self::NAMES.join(", ")
                )))
            }
        })
    }

    /// Builds the problem, validating the configuration.
    pub fn build(&self) -> Result<Box<dyn Problem>> {
        Ok(match self {
            ProblemConfig::Sphere(c) => Box::new(Sphere::new(c.clone())?),
            ProblemConfig::Toy1d(c) => Box::new(Toy1d::new(c.clone())?),
            ProblemConfig::Quadratic(c) => Box::new(Quadratic::new(c.clone())?),
            ProblemConfig::Lasso(c) => Box::new(Lasso::new(c.clone())?),
            ProblemConfig::Sinusoid(c) => Box::new(Sinusoid::new(c.clone())?),
            ProblemConfig::ElasticNetIsta(c) => Box::new(ElasticNetIsta::new(c.clone())?),
            ProblemConfig::FixedPointToy(c) => Box::new(FixedPointToy::new(c.clone())?),
            ProblemConfig::QpAdmm(c) => Box::new(QpAdmm::new(c.clone())?),
        })
    }
}
