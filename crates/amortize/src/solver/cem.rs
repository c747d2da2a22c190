//! The cross-entropy method (tutorial §6.5.8), with hard elites or the differentiable soft
//! top-k of DCEM (Amos & Yarats 2020).

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::Solver;
use crate::problem::Problem;
use crate::projection::{CappedSimplex, Projection};
use crate::{Error, Result};

/// # Cross-entropy method
/// Per instance, a Gaussian N(μ, diag σ²) over free y: draw `samples` candidates, score them by
/// f(π_Y(y); x), and refit μ and σ to the best `elites` (hard), or to all candidates weighted
/// by the soft top-k w = LML(−f̂/τ) of mass `elites`, f̂ the scores standardised per instance
/// (DCEM, differentiable in the scores).
/// The new parameters are mixed with the old: μ ← (1 − s)·μ_fit + s·μ (s = `smoothing`).
///
/// ## Requires
/// Only [`Problem::objective`] (derivative-free).
///
/// ## Optimality residual
/// ‖∇_y f(π_Y(μ); x)‖ at the mean (a certificate, not used by the method).
pub struct CrossEntropyMethod<'a> {
    problem: &'a dyn Problem,
    samples: usize,
    elites: usize,
    smoothing: f64,
    init_std: f64,
    soft_temperature: Option<f64>,
    seed: u64,
}

/// The state of [`CrossEntropyMethod`].
pub struct CemState {
    mean: Tensor,
    std: Tensor,
    rng: StdRng,
}

impl<'a> CrossEntropyMethod<'a> {
    /// Hard-elite CEM: `samples` candidates per instance and step, `elites` < `samples` kept,
    /// smoothing in [0, 1), initial standard deviation, and the seed of the sampler.
    pub fn new(
        problem: &'a dyn Problem,
        samples: usize,
        elites: usize,
        smoothing: f64,
        init_std: f64,
        seed: u64,
    ) -> Result<Self> {
        if elites == 0
            || elites >= samples
            || !(0.0..1.0).contains(&smoothing)
            || !(init_std.is_finite() && init_std > 0.0)
        {
            return Err(Error::invalid(format!(
                "cem: need 0 < elites < samples, 0 <= smoothing < 1 and init_std > 0 \
                 (got elites {elites}, samples {samples}, smoothing {smoothing}, init_std {init_std})"
            )));
        }
        Ok(CrossEntropyMethod {
            problem,
            samples,
            elites,
            smoothing,
            init_std,
            soft_temperature: None,
            seed,
        })
    }

    /// The DCEM variant: soft top-k weights with temperature τ > 0 instead of hard elites.
    pub fn soft(mut self, temperature: f64) -> Result<Self> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::invalid(
                "cem: the soft top-k temperature must be > 0",
            ));
        }
        self.soft_temperature = Some(temperature);
        Ok(self)
    }

    /// Elite weights `(n, samples)` summing to 1 per instance, from scores `(n, samples)`.
    fn weights(&self, scores: &Tensor) -> Result<Tensor> {
        let k = self.elites as f64;
        let w = match self.soft_temperature {
            Some(tau) => {
                // Standardised per instance, so that τ does not depend on the scale of f.
                let centred = scores.broadcast_sub(&scores.mean_keepdim(1)?)?;
                let std = centred.sqr()?.mean_keepdim(1)?.sqrt()?.affine(1.0, 1e-12)?;
                let z = centred.broadcast_div(&std)?;
                CappedSimplex::new(k, 1.0)?.project(&z.affine(-1.0 / tau, 0.0)?)?
            }
            None => {
                // Hard elites: the `elites` smallest scores per row.
                let order = scores.arg_sort_last_dim(true)?;
                let rank = order.arg_sort_last_dim(true)?;
                rank.lt(self.elites as u32)?.to_dtype(scores.dtype())?
            }
        };
        Ok(w.affine(1.0 / k, 0.0)?)
    }
}

impl Solver for CrossEntropyMethod<'_> {
    type State = CemState;

    fn name(&self) -> &'static str {
        if self.soft_temperature.is_some() {
            "dcem"
        } else {
            "cem"
        }
    }

    fn init(&self, y0: &Tensor, _x: &Tensor) -> Result<CemState> {
        Ok(CemState {
            mean: y0.clone(),
            std: y0.ones_like()?.affine(self.init_std, 0.0)?,
            rng: StdRng::seed_from_u64(self.seed),
        })
    }

    fn step(&self, mut s: CemState, x: &Tensor) -> Result<CemState> {
        let (n, d) = s.mean.dims2()?;
        let k = self.samples;
        let noise: Vec<f64> = (0..n * k * d)
            .map(|_| StandardNormal.sample(&mut s.rng))
            .collect();
        let noise =
            Tensor::from_vec(noise, (n, k, d), s.mean.device())?.to_dtype(s.mean.dtype())?;
        let cand = noise
            .broadcast_mul(&s.std.unsqueeze(1)?)?
            .broadcast_add(&s.mean.unsqueeze(1)?)?;
        // Score every candidate against its own instance's context.
        let flat = cand.reshape((n * k, d))?;
        let x_rep = x
            .unsqueeze(1)?
            .broadcast_as((n, k, x.dim(1)?))?
            .reshape((n * k, x.dim(1)?))?;
        let scores = self
            .problem
            .objective(&self.problem.to_domain(&flat)?, &x_rep)?
            .reshape((n, k))?;
        let w = self.weights(&scores)?.unsqueeze(2)?;
        let mean = cand.broadcast_mul(&w)?.sum(1)?;
        let var = cand
            .broadcast_sub(&mean.unsqueeze(1)?)?
            .sqr()?
            .broadcast_mul(&w)?
            .sum(1)?;
        let std = var.sqrt()?.clamp(1e-12, f64::INFINITY)?;
        let a = self.smoothing;
        s.mean = mean.affine(1.0 - a, 0.0)?.add(&s.mean.affine(a, 0.0)?)?;
        s.std = std.affine(1.0 - a, 0.0)?.add(&s.std.affine(a, 0.0)?)?;
        Ok(s)
    }

    fn iterate<'s>(&self, s: &'s CemState) -> &'s Tensor {
        &s.mean
    }

    fn detach(&self, s: CemState) -> CemState {
        CemState {
            mean: s.mean.detach(),
            std: s.std.detach(),
            rng: s.rng,
        }
    }

    fn value(&self, s: &CemState, x: &Tensor) -> Result<Tensor> {
        self.problem.objective(&self.problem.to_domain(&s.mean)?, x)
    }

    fn residual(&self, s: &CemState, x: &Tensor) -> Result<Tensor> {
        self.problem.residual(&s.mean, x)
    }
}
