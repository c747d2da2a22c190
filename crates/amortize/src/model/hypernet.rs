//! A hypernetwork for meta-learning (tutorial §6.3.1): a fully-amortized model from a task's
//! support set straight to the learner's weights, with no inner optimisation.

use candle_core::{Device, Tensor, Var, D};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::{Mlp, MlpConfig, Model, ModelConfig, Params, Prediction};
use crate::problem::Problem;
use crate::{Error, Result};

/// The settings of [`HyperNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HyperNetConfig {
    /// Hidden widths of the per-pair encoder ψ (its output is the last width; default
    /// [64, 64]).
    pub encoder: Vec<usize>,
    /// Hidden widths of the decoder ρ from the pooled code to the weights (default [128]).
    pub decoder: Vec<usize>,
    /// The decoder's output is scaled by this before it is added to the learned base weights
    /// φ₀, so training starts near a freshly initialised learner (default 0.01).
    pub output_scale: f64,
    /// Rate of the plain gradient steps that `forward_with_steps` adds on the support loss
    /// (fine-tuning the hypernet's answer at test time; default 0.01).
    pub finetune_rate: f64,
}

impl Default for HyperNetConfig {
    fn default() -> Self {
        HyperNetConfig {
            encoder: vec![64, 64],
            decoder: vec![128],
            output_scale: 0.01,
            finetune_rate: 0.01,
        }
    }
}

/// # HyperNet
/// φ(x) = φ₀ + s · ρ( (1/K) Σᵢ ψ(tᵢ, yᵢ) ) over the K support pairs of the task x
/// ([`Problem::support_set`]): a DeepSets encoder, so the prediction does not depend on the
/// order of the shots. θ = {φ₀, ψ, ρ}; φ₀ starts at the family's default solution. Trained
/// with the query loss, it amortizes the whole adaptation (§6.3.1).
pub struct HyperNet {
    config: HyperNetConfig,
    params: Params,
    base: Var,
    encoder: Mlp,
    decoder: Mlp,
}

impl HyperNet {
    /// A hypernet for `problem`, which must expose support sets and a default solution.
    pub fn new(
        config: HyperNetConfig,
        problem: &dyn Problem,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        if config.encoder.is_empty()
            || !(config.output_scale.is_finite() && config.finetune_rate.is_finite())
        {
            return Err(Error::invalid(
                "hypernet: needs at least one encoder width and finite output_scale and finetune_rate",
            ));
        }
        let probe = problem.sample_contexts(1, rng, device)?;
        let (inputs, targets) = problem.support_set(&probe)?.ok_or_else(|| {
            Error::invalid(format!(
                "hypernet: problem '{}' has no support sets (a meta-learning family such as sinusoid)",
                problem.name()
            ))
        })?;
        let pair = inputs.dim(2)? + targets.dim(2)?;
        let base = problem.default_solution(rng, device)?.ok_or_else(|| {
            Error::invalid("hypernet: the problem has no default solution to start from")
        })?;
        let code = *config.encoder.last().expect("checked non-empty");
        let encoder = Mlp::new(
            MlpConfig {
                hidden: config.encoder[..config.encoder.len() - 1].to_vec(),
                project_output: false,
                ..MlpConfig::default()
            },
            pair,
            code,
            rng,
            device,
        )?;
        let decoder = Mlp::new(
            MlpConfig {
                hidden: config.decoder.clone(),
                project_output: false,
                ..MlpConfig::default()
            },
            code,
            problem.solution_dim(),
            rng,
            device,
        )?;
        let mut params = Params::new();
        let base = params.add("base", base)?;
        for (name, var) in encoder.params().iter() {
            params.insert(format!("encoder.{name}"), var.clone());
        }
        for (name, var) in decoder.params().iter() {
            params.insert(format!("decoder.{name}"), var.clone());
        }
        Ok(HyperNet {
            config,
            params,
            base,
            encoder,
            decoder,
        })
    }
}

impl Model for HyperNet {
    fn forward(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction> {
        let (inputs, targets) = problem
            .support_set(x)?
            .ok_or_else(|| Error::invalid("hypernet: contexts without a support set"))?;
        let pairs = Tensor::cat(&[&inputs, &targets], D::Minus1)?;
        let (n, k, d) = pairs.dims3()?;
        let codes = self
            .encoder
            .forward_raw(&pairs.reshape((n * k, d))?)?
            .relu()?;
        let pooled = codes.reshape((n, k, codes.dim(1)?))?.mean(1)?;
        let delta = self.decoder.forward_raw(&pooled)?;
        let y = delta
            .affine(self.config.output_scale, 0.0)?
            .broadcast_add(self.base.as_tensor())?;
        Ok(Prediction {
            y: problem.to_domain(&y)?,
            iterates: Vec::new(),
            penalty: None,
        })
    }

    fn forward_with_steps(
        &self,
        x: &Tensor,
        problem: &dyn Problem,
        steps: usize,
    ) -> Option<Result<Prediction>> {
        Some((|| {
            let mut y = self.forward(x, problem)?.y;
            let xs = x.to_dtype(y.dtype())?;
            let mut iterates = vec![y.clone()];
            for _ in 0..steps {
                let g = problem.domain_gradient(&y.detach(), &xs)?.detach();
                y = problem.to_domain(&y.sub(&g.affine(self.config.finetune_rate, 0.0)?)?)?;
                iterates.push(y.clone());
            }
            Ok(Prediction {
                y,
                iterates,
                penalty: None,
            })
        })())
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::HyperNet(self.config.clone())
    }
}
