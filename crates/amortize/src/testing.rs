//! Helpers shared by tests: the problem zoo, finite-difference checks and scratch folders.

use std::ffi::OsStr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

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

/// A fresh, empty folder under the system's temporary directory, named after the process and
/// `name`, removed with everything in it when dropped: also when the test using it fails, so
/// test runs leave nothing behind. It reads as a [`Path`].
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `<temp>/amortize-<pid>-<name>`, emptying it first if a previous run with the
    /// same process id left it.
    pub fn new(name: &str) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("amortize-{}-{name}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<OsStr> for ScratchDir {
    fn as_ref(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Best effort: a folder that cannot be removed must not turn a pass into a panic.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
