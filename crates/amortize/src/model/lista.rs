//! Learned ISTA (Gregor & LeCun 2010; tutorial §6.2.2): a semi-amortized sparse-coding model
//! whose layers are ISTA steps with learned weights.

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{Model, ModelConfig, Params, Prediction};
use crate::problem::{Lasso, Problem};
use crate::{Error, Result};

/// The settings of [`Lista`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListaConfig {
    /// Unrolled layers K (default 16).
    pub layers: usize,
    /// One (F, G, β) shared by every layer instead of one per layer (default false).
    pub tied: bool,
    /// Plain ISTA steps appended after the learned layers at prediction time, continuing
    /// from the last layer's code (a warm start; default 0).
    pub continuation: usize,
}

impl Default for ListaConfig {
    fn default() -> Self {
        ListaConfig {
            layers: 16,
            tied: false,
            continuation: 0,
        }
    }
}

/// # LISTA
/// ŷ⁰ = 0, ŷᵏ⁺¹ = h_{βₖ}(x Fₖ + ŷᵏ Gₖ) for k < K (rows are instances), with the shrinkage
/// h_β(v) = sign(v) max(|v| − β, 0) written as relu(v − β) − relu(−v − β) so that β gets a
/// gradient, and per-coordinate thresholds βₖ ∈ Rⁿ. θ = {Fₖ, Gₖ, βₖ} starts at ISTA's
/// (eq. 37 in row form): F = W/L, G = I − WᵀW/L, β = α/L, so the untrained model is K steps
/// of ISTA from 0. After the K layers, `continuation` plain ISTA steps can follow.
///
/// The prediction's `iterates` are ŷ⁰ … ŷᴷ (and the continuation's), for the iterate-summed
/// loss and per-layer evaluation.
pub struct Lista {
    config: ListaConfig,
    params: Params,
    layers: Vec<(Var, Var, Var)>,
    ista: (Tensor, Tensor, f64),
}

/// h_β(v) = relu(v − β) − relu(−v − β), β broadcast over rows.
pub fn shrink(v: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let pos = v.broadcast_sub(beta)?.relu()?;
    let neg = v.neg()?.broadcast_sub(beta)?.relu()?;
    Ok(pos.sub(&neg)?)
}

impl Lista {
    /// LISTA for `lasso`, initialised from ISTA, with parameters of `dtype`.
    pub fn new(config: ListaConfig, lasso: &Lasso, dtype: DType, device: &Device) -> Result<Self> {
        if config.layers == 0 {
            return Err(Error::invalid("lista: layers must be at least 1"));
        }
        let l = lasso.lipschitz();
        let w = lasso.dictionary().to_dtype(dtype)?.to_device(device)?;
        let n = w.dim(1)?;
        let f = w.affine(1.0 / l, 0.0)?;
        let eye = Tensor::eye(n, dtype, device)?;
        let g = eye.sub(&w.t()?.matmul(&w)?.affine(1.0 / l, 0.0)?)?;
        let beta = Tensor::full(lasso.alpha() / l, n, device)?.to_dtype(dtype)?;
        let mut params = Params::new();
        let count = if config.tied { 1 } else { config.layers };
        let mut layers = Vec::with_capacity(count);
        for k in 0..count {
            layers.push((
                params.add(format!("layer{k}.F"), f.clone())?,
                params.add(format!("layer{k}.G"), g.clone())?,
                params.add(format!("layer{k}.beta"), beta.clone())?,
            ));
        }
        Ok(Lista {
            config,
            params,
            layers,
            ista: (f, g, lasso.alpha() / l),
        })
    }

    /// The configuration.
    pub fn lista_config(&self) -> &ListaConfig {
        &self.config
    }

    /// The same model with another number of continuation steps.
    pub fn with_continuation(mut self, steps: usize) -> Self {
        self.config.continuation = steps;
        self
    }
}

impl Model for Lista {
    fn forward(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction> {
        let dtype = self.ista.0.dtype();
        let x = x.to_dtype(dtype)?;
        let n = self.ista.1.dim(0)?;
        if x.dim(1)? != self.ista.0.dim(0)? {
            return Err(Error::invalid(format!(
                "lista: contexts have {} columns, the dictionary has {} rows",
                x.dim(1)?,
                self.ista.0.dim(0)?
            )));
        }
        let mut y = Tensor::zeros((x.dim(0)?, n), dtype, x.device())?;
        let mut iterates = vec![y.clone()];
        for k in 0..self.config.layers {
            let (f, g, beta) = &self.layers[k.min(self.layers.len() - 1)];
            let v = x.matmul(f.as_tensor())?.add(&y.matmul(g.as_tensor())?)?;
            y = shrink(&v, beta.as_tensor())?;
            iterates.push(y.clone());
        }
        let (f, g, beta) = &self.ista;
        let beta = Tensor::full(*beta, n, x.device())?.to_dtype(dtype)?;
        let xf = x.matmul(f)?;
        for _ in 0..self.config.continuation {
            y = shrink(&xf.add(&y.matmul(g)?)?, &beta)?;
            iterates.push(y.clone());
        }
        Ok(Prediction {
            y: problem.to_domain(&y)?,
            iterates,
        })
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::Lista(self.config.clone())
    }
}
