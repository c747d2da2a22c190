//! HyperAnderson acceleration (HyperAA; Bai et al. 2022; tutorial §6.4.3, eq. 54–55): a
//! learned initial iterate and per-iteration Anderson coefficients α (on the simplex) and β
//! predicted from the residual history.

use std::collections::VecDeque;

use candle_core::{DType, Device, Tensor, D};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::gru::sigmoid;
use super::neural_fp::{needs_map, row_norm, zeroed_mlp};
use super::preconditioner::{apply_map, preconditioner_vars, StepPreconditioner};
use super::{Mlp, Model, ModelConfig, Params, Prediction};
use crate::problem::Problem;
use crate::solver::{anderson_weights, stack_history};
use crate::{Error, Result};

/// Settings of [`HyperAa`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HyperAaConfig {
    /// Trained iterations K (default 25).
    pub steps: usize,
    /// Anderson memory M: the update mixes the last M + 1 iterates (default 5).
    pub memory: usize,
    /// Hidden widths of the init model x ↦ ŷ⁰ (default [128]); empty turns it off (ŷ⁰ = 0).
    pub init: Vec<usize>,
    /// Hidden widths of the coefficient model (default [64, 64]).
    pub hidden: Vec<usize>,
    /// Weight of Ω(α) = Σₜ ‖αᵗ − α*ᵗ‖² / K, the distance to Anderson's least-squares weights
    /// (default 1; the trainer anneals it to zero, `train.penalty_anneal`).
    pub penalty: f64,
    /// Weight of Ω(β) = Σₜ (βᵗ − β⁰)² / K, the distance of the learned β from its untrained
    /// value (1, Anderson's, in the correction form; `initial_beta` in the simplex form),
    /// annealed with Ω(α) (default 0: off). On the ADMM map (`qp-admm`) truncated
    /// backpropagation learns a β that helps the next iterate and slows the run.
    pub beta_penalty: f64,
    /// β at initialisation, in (0, 1) (default 0.95; Anderson's is 1), for `weights = simplex`.
    pub initial_beta: f64,
    /// How α is parameterised (default `correction`).
    pub weights: HyperAaWeights,
    /// Each iterate yᵗ, t ≥ 1, enters the next step as a constant (default true; see
    /// [`super::NeuralFpConfig::truncated`]: through all steps the gradient explodes).
    pub truncated: bool,
    /// Also learn a diagonal preconditioner of the map (default false; see
    /// [`super::preconditioner`]): HyperAA then mixes the pairs of the preconditioned map g_D,
    /// which has g's fixed points. Needs a family whose map has per-coordinate steps.
    pub precondition: bool,
}

/// How [`HyperAa`] forms the mixing weights α.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HyperAaWeights {
    /// α = α* + (δ − mean δ): Anderson's least-squares weights (differentiable) plus a learned
    /// correction in the affine set 1ᵀα = 1, and β = 1 + ½ tanh(o); both corrections start at
    /// zero, so the untrained model is Anderson (default).
    #[default]
    Correction,
    /// α = softmax(δ) on the simplex and β = σ(o) (Bai et al.'s form): no negative weights, so
    /// none of Anderson's extrapolation.
    Simplex,
}

impl Default for HyperAaConfig {
    fn default() -> Self {
        HyperAaConfig {
            steps: 25,
            memory: 5,
            init: vec![128],
            hidden: vec![64, 64],
            penalty: 1.0,
            beta_penalty: 0.0,
            initial_beta: 0.95,
            weights: HyperAaWeights::Correction,
            truncated: true,
            precondition: false,
        }
    }
}

/// # HyperAA
/// ŷ⁰ = init_θ(x); at iteration t with the last k ≤ M + 1 pairs (yᵢ, gᵢ) and residuals
/// Gᵗ = [gᵢ − yᵢ], the coefficient model reads the normalised Gram matrix GᵗGᵗᵀ / max diag
/// (padded to (M + 1)², oldest entries first), the progress t/K and log₁₀ of the current
/// normalised residual, and outputs δ (one entry per stored pair) and o, from which α and β are
/// formed ([`HyperAaWeights`]: a correction of Anderson's weights by default, or Bai et al.'s
/// simplex form), then ŷᵗ⁺¹ = AA_Update(α, β) (eq. 47, 54). Trained with the regression L_Σ
/// with increasing weights plus the annealed Ω(α) (eq. 55). The coefficient model is shared
/// over iterations, so it runs past K unchanged ([`Model::forward_with_steps`]).
pub struct HyperAa {
    config: HyperAaConfig,
    params: Params,
    init: Option<Mlp>,
    coefficients: Mlp,
    precondition: Option<StepPreconditioner>,
    beta_offset: f64,
    dim: usize,
    dtype: DType,
}

impl HyperAa {
    /// A HyperAA model for the fixed-point family `problem` (f32 parameters from `rng`).
    pub fn new(
        config: HyperAaConfig,
        problem: &dyn Problem,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        Self::with_dtype(config, problem, rng, DType::F32, device)
    }

    /// As [`HyperAa::new`] with parameters of `dtype` (f64 for gradient checks).
    pub fn with_dtype(
        config: HyperAaConfig,
        problem: &dyn Problem,
        rng: &mut StdRng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let map = needs_map(problem, "hyper-aa")?;
        if config.steps == 0 || config.init.contains(&0) || config.hidden.contains(&0) {
            return Err(Error::invalid(
                "hyper-aa: steps and every width must be at least 1",
            ));
        }
        if !(config.penalty.is_finite() && config.penalty >= 0.0) {
            return Err(Error::invalid("hyper-aa: penalty must be finite and >= 0"));
        }
        if !(config.beta_penalty.is_finite() && config.beta_penalty >= 0.0) {
            return Err(Error::invalid(
                "hyper-aa: beta_penalty must be finite and >= 0",
            ));
        }
        if !(config.initial_beta > 0.0 && config.initial_beta < 1.0) {
            return Err(Error::invalid("hyper-aa: initial_beta must be in (0, 1)"));
        }
        let dim = problem.solution_dim();
        let mut params = Params::new();
        let init = if config.init.is_empty() {
            None
        } else {
            Some(zeroed_mlp(
                &mut params,
                "init",
                &config.init,
                problem.context_dim(),
                dim,
                dtype,
                rng,
                device,
            )?)
        };
        let slots = config.memory + 1;
        let coefficients = zeroed_mlp(
            &mut params,
            "coefficients",
            &config.hidden,
            slots * slots + 2,
            slots + 1,
            dtype,
            rng,
            device,
        )?;
        let precondition = match config.precondition {
            true => Some(StepPreconditioner::new(
                &mut params,
                problem,
                map,
                "hyper-aa",
                dtype,
                rng,
                device,
            )?),
            false => None,
        };
        let b = config.initial_beta;
        Ok(HyperAa {
            precondition,
            beta_offset: (b / (1.0 - b)).ln(),
            config,
            params,
            init,
            coefficients,
            dim,
            dtype,
        })
    }

    fn run(&self, x: &Tensor, problem: &dyn Problem, total: usize) -> Result<Prediction> {
        let map = needs_map(problem, "hyper-aa")?;
        let n = x.dim(0)?;
        let x = x.to_dtype(self.dtype)?;
        let slots = self.config.memory + 1;
        let mut y = match &self.init {
            Some(mlp) => mlp.forward_raw(&x)?,
            None => Tensor::zeros((n, self.dim), self.dtype, x.device())?,
        };
        let steps = match &self.precondition {
            Some(p) => Some(p.multipliers_for(map, &x, "hyper-aa")?),
            None => None,
        };
        // The reference of the progress feature is the family's ‖R(0)‖, which does not depend on
        // the parameters (so detaching it is exact).
        let r0 = row_norm(&map.apply(&y.zeros_like()?, &x)?)?.detach();
        let mut history: VecDeque<(Tensor, Tensor)> = VecDeque::new();
        let mut iterates = vec![y.clone()];
        let mut penalty: Option<Tensor> = None;
        for t in 0..total {
            if self.config.truncated && t > 0 {
                y = y.detach();
            }
            let g = apply_map(map, &y, &x, steps.as_ref())?;
            history.push_back((y.clone(), g));
            while history.len() > slots {
                history.pop_front();
            }
            let k = history.len();
            let (ys, gs) = stack_history(history.iter().map(|(y, g)| (y, g)))?;
            let r = gs.sub(&ys)?;
            // Features: the Gram matrix of the residuals over its largest diagonal entry.
            let gram = r.matmul(&r.transpose(1, 2)?.contiguous()?)?;
            let diag_max = gram
                .reshape((n, k * k))?
                .max_keepdim(1)?
                .clamp(1e-30, f64::INFINITY)?;
            let mut gram = gram
                .reshape((n, k * k))?
                .broadcast_div(&diag_max)?
                .reshape((n, k, k))?;
            if k < slots {
                gram = gram
                    .pad_with_zeros(1, slots - k, 0)?
                    .pad_with_zeros(2, slots - k, 0)?;
            }
            let current = row_norm(&history[k - 1].1.sub(&history[k - 1].0)?)?;
            let progress = current
                .broadcast_div(&r0.clamp(1e-30, f64::INFINITY)?)?
                .clamp(1e-12, f64::INFINITY)?
                .log()?
                .affine(1.0 / std::f64::consts::LN_10, 0.0)?;
            let step = Tensor::full(
                (t.min(self.config.steps) as f32) / self.config.steps as f32,
                (n, 1),
                x.device(),
            )?
            .to_dtype(self.dtype)?;
            let features = Tensor::cat(&[gram.reshape((n, slots * slots))?, step, progress], 1)?;
            let out = self.coefficients.forward_raw(&features)?;
            let logits = out.narrow(1, slots - k, k)?;
            let target = anderson_weights(&r, 1e-3)?;
            let (alpha, beta) = match self.config.weights {
                HyperAaWeights::Simplex => (
                    softmax_rows(&logits)?.unsqueeze(1)?,
                    sigmoid(&out.narrow(1, slots, 1)?.affine(1.0, self.beta_offset)?)?,
                ),
                HyperAaWeights::Correction => (
                    target.add(
                        &logits
                            .broadcast_sub(&logits.mean_keepdim(1)?)?
                            .unsqueeze(1)?,
                    )?,
                    out.narrow(1, slots, 1)?.tanh()?.affine(0.5, 1.0)?,
                ),
            };
            let mixed_g = alpha.matmul(&gs)?.squeeze(1)?;
            let mixed_y = alpha.matmul(&ys)?.squeeze(1)?;
            y = mixed_g
                .broadcast_mul(&beta)?
                .add(&mixed_y.broadcast_mul(&beta.affine(-1.0, 1.0)?)?)?;
            iterates.push(y.clone());
            if t < self.config.steps {
                let per_term = 1.0 / (n * self.config.steps) as f64;
                let mut terms = Vec::new();
                if self.config.penalty > 0.0 {
                    terms.push(
                        alpha
                            .sub(&target.detach())?
                            .sqr()?
                            .sum_all()?
                            .affine(self.config.penalty * per_term, 0.0)?,
                    );
                }
                if self.config.beta_penalty > 0.0 {
                    let untrained = match self.config.weights {
                        HyperAaWeights::Simplex => self.config.initial_beta,
                        HyperAaWeights::Correction => 1.0,
                    };
                    terms.push(
                        beta.affine(1.0, -untrained)?
                            .sqr()?
                            .sum_all()?
                            .affine(self.config.beta_penalty * per_term, 0.0)?,
                    );
                }
                for term in terms {
                    penalty = Some(match penalty {
                        Some(p) => p.add(&term)?,
                        None => term,
                    });
                }
            }
        }
        Ok(Prediction {
            y,
            iterates,
            penalty,
        })
    }
}

/// softmax over the last dimension from tensor ops (candle's fused one has no backward).
fn softmax_rows(logits: &Tensor) -> Result<Tensor> {
    let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
    let e = shifted.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

impl Model for HyperAa {
    fn forward(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction> {
        self.run(x, problem, self.config.steps)
    }

    fn forward_with_steps(
        &self,
        x: &Tensor,
        problem: &dyn Problem,
        steps: usize,
    ) -> Option<Result<Prediction>> {
        Some(self.run(x, problem, steps))
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn whole_run_params(&self) -> Vec<candle_core::Var> {
        preconditioner_vars(&self.params)
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::HyperAa(self.config.clone())
    }
}
