//! Helpers shared by tests: the problem zoo and finite-difference checks.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::problem::{
    LassoConfig, Problem, ProblemConfig, QuadraticConfig, SphereConfig, Toy1dConfig,
};
use crate::Result;

/// Every built-in problem family with small settings, for table-driven tests.
pub fn problem_zoo() -> Vec<ProblemConfig> {
    vec![
        ProblemConfig::Sphere(SphereConfig::default()),
        ProblemConfig::Sphere(SphereConfig {
            gamma: 0.0,
            ..SphereConfig::default()
        }),
        ProblemConfig::Toy1d(Toy1dConfig::default()),
        ProblemConfig::Quadratic(QuadraticConfig::default()),
        ProblemConfig::Lasso(LassoConfig {
            signal_dim: 6,
            code_dim: 10,
            ..LassoConfig::default()
        }),
    ]
}

/// Central finite differences of the scalar function `f` at `y` (f64, `(n, d)`), as an
/// `(n, d)` tensor: ∂f/∂y_ij ≈ (f(y + h e_ij) − f(y − h e_ij)) / 2h.
pub fn finite_difference_grad(
    y: &Tensor,
    h: f64,
    f: impl Fn(&Tensor) -> Result<f64>,
) -> Result<Tensor> {
    let (n, d) = y.dims2()?;
    let base: Vec<f64> = y.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0.0; n * d];
    for i in 0..n * d {
        let mut plus = base.clone();
        plus[i] += h;
        let mut minus = base.clone();
        minus[i] -= h;
        let fp = f(&Tensor::from_vec(plus, (n, d), y.device())?)?;
        let fm = f(&Tensor::from_vec(minus, (n, d), y.device())?)?;
        out[i] = (fp - fm) / (2.0 * h);
    }
    Ok(Tensor::from_vec(out, (n, d), y.device())?)
}

/// Largest absolute difference between two tensors of equal shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(a.to_dtype(DType::F64)?
        .sub(&b.to_dtype(DType::F64)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar()?)
}

/// `n` contexts of `problem` in f64 and `n` points of its domain, both seeded.
pub fn sample_pair(problem: &dyn Problem, n: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = problem
        .sample_contexts(n, &mut rng, &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let d = problem.solution_dim();
    let y: Vec<f64> = (0..n * d)
        .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng))
        .collect();
    let y = Tensor::from_vec(y, (n, d), &Device::Cpu)?;
    let y = problem.to_domain(&y)?;
    Ok((x, y))
}
