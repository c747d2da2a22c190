//! The fully-amortized multilayer perceptron ŷθ(x) = π_Y(W_L σ(… σ(W_1 x + b_1) …) + b_L).

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Model, ModelConfig, Params, Prediction};
use crate::problem::Problem;
use crate::{Error, Result};

/// Hidden-layer nonlinearity σ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(0, u) (default).
    #[default]
    Relu,
    /// tanh(u).
    Tanh,
    /// u · σ(u) (SiLU / swish).
    Silu,
    /// log(1 + eᵘ).
    Softplus,
}

impl Activation {
    /// Applies σ elementwise.
    pub fn apply(self, u: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => u.relu()?,
            Activation::Tanh => u.tanh()?,
            Activation::Silu => u.silu()?,
            Activation::Softplus => {
                // log(1 + e^u) = max(u, 0) + log(1 + e^{−|u|}), stable for large |u|.
                let pos = u.relu()?;
                let neg_abs = u.abs()?.neg()?;
                pos.add(&neg_abs.exp()?.affine(1.0, 1.0)?.log()?)?
            }
        })
    }
}

/// Settings of an [`Mlp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpConfig {
    /// Hidden layer widths (default [128, 128], the tutorial's sphere model).
    pub hidden: Vec<usize>,
    /// Hidden nonlinearity (default relu).
    pub activation: Activation,
    /// Whether the output is composed with the problem's map onto Y (default true).
    pub project_output: bool,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            hidden: vec![128, 128],
            activation: Activation::Relu,
            project_output: true,
        }
    }
}

/// A fully-connected net from context to solution. Layer l computes u W_l + b_l with W_l of
/// shape (in, out), initialised as PyTorch does: U(−1/√in, 1/√in) for weights and biases.
#[derive(Debug, Clone)]
pub struct Mlp {
    config: MlpConfig,
    params: Params,
    layers: Vec<(candle_core::Var, candle_core::Var)>,
}

impl Mlp {
    /// Builds the net for `context_dim → solution_dim`, drawing θ from `rng` (f32).
    pub fn new(
        config: MlpConfig,
        context_dim: usize,
        solution_dim: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        if config.hidden.contains(&0) {
            return Err(Error::invalid("mlp: hidden widths must be at least 1"));
        }
        let mut dims = vec![context_dim];
        dims.extend(&config.hidden);
        dims.push(solution_dim);
        let mut params = Params::new();
        let mut layers = Vec::new();
        for (l, w) in dims.windows(2).enumerate() {
            let (fan_in, fan_out) = (w[0], w[1]);
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut draw = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-bound..bound)).collect()
            };
            let weight = Tensor::from_vec(draw(fan_in * fan_out), (fan_in, fan_out), device)?;
            let bias = Tensor::from_vec(draw(fan_out), fan_out, device)?;
            let wv = params.add(format!("layer{l}.weight"), weight)?;
            let bv = params.add(format!("layer{l}.bias"), bias)?;
            layers.push((wv, bv));
        }
        Ok(Mlp {
            config,
            params,
            layers,
        })
    }

    /// The settings.
    pub fn mlp_config(&self) -> &MlpConfig {
        &self.config
    }

    /// Layer widths, input to output.
    pub fn widths(&self) -> Vec<usize> {
        let mut dims = vec![self.layers[0].0.dim(0).unwrap_or(0)];
        dims.extend(self.layers.iter().map(|(w, _)| w.dim(1).unwrap_or(0)));
        dims
    }

    /// The raw output before the map onto Y.
    pub fn forward_raw(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.to_dtype(self.layers[0].0.dtype())?;
        let last = self.layers.len() - 1;
        for (l, (w, b)) in self.layers.iter().enumerate() {
            h = h.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
            if l < last {
                h = self.config.activation.apply(&h)?;
            }
        }
        Ok(h)
    }

    /// Converts every parameter to `dtype` (f64 for finite-difference tests).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut params = Params::new();
        let mut layers = Vec::new();
        for (l, (w, b)) in self.layers.iter().enumerate() {
            let wv = params.add(format!("layer{l}.weight"), w.as_tensor().to_dtype(dtype)?)?;
            let bv = params.add(format!("layer{l}.bias"), b.as_tensor().to_dtype(dtype)?)?;
            layers.push((wv, bv));
        }
        Ok(Mlp {
            config: self.config.clone(),
            params,
            layers,
        })
    }

    /// The layers' (weight, bias) variables, input to output.
    pub fn layers(&self) -> &[(candle_core::Var, candle_core::Var)] {
        &self.layers
    }
}

impl Model for Mlp {
    fn forward(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction> {
        let raw = self.forward_raw(x)?;
        let y = if self.config.project_output {
            problem.to_domain(&raw)?
        } else {
            raw
        };
        Ok(Prediction {
            y,
            iterates: Vec::new(),
            penalty: None,
        })
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::Mlp(self.config.clone())
    }

    fn as_mlp(&self) -> Option<&Mlp> {
        Some(self)
    }
}
