//! Analytic LISTA (Liu et al. 2019): LISTA with the weight matrix computed from the dictionary
//! and only a step size and a threshold learned per layer, plus support selection.

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::lista::{extrapolate, shrink_selected, support_kept, SupportRule};
use super::{Model, ModelConfig, Params, Prediction};
use crate::linalg::Cholesky;
use crate::problem::{Lasso, Problem};
use crate::{Error, Result};

/// The settings of [`Alista`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlistaConfig {
    /// Unrolled layers K (default 16).
    pub layers: usize,
    /// Support selection: layer k lets the largest min(k·`support_step`, `support_max`) percent
    /// of each code's entries through unthresholded (default 1.2).
    pub support_step: f64,
    /// The cap of that percentage (default 13).
    pub support_max: f64,
    /// Which of the largest entries pass unthresholded (default: all of them).
    pub support_rule: SupportRule,
    /// A learned momentum βₖ per layer (heavy ball, as in HyperLISTA, Chen et al. 2021),
    /// started at 0 so the untrained model is plain ALISTA (default false).
    pub momentum: bool,
    /// Thresholds scaled per instance by the relative residual ‖x − Wzᵏ‖/‖x‖ (HyperLISTA's
    /// adaptive thresholds, Chen et al. 2021): layer 0 is unchanged, and each instance's
    /// threshold then shrinks as fast as its own residual does (default false).
    pub adaptive_threshold: bool,
}

impl Default for AlistaConfig {
    fn default() -> Self {
        AlistaConfig {
            layers: 16,
            support_step: 1.2,
            support_max: 13.0,
            support_rule: SupportRule::default(),
            momentum: false,
            adaptive_threshold: false,
        }
    }
}

/// # ALISTA
/// ŷ⁰ = 0, vᵏ = ŷᵏ − γₖ (ŷᵏWᵀ − x) W̃, ŷᵏ⁺¹ = h^{ss}_{θₖ}(vᵏ) (rows are instances), where
/// the analytic weight W̃ minimises ‖W̃ᵀW‖_F subject to diag(W̃ᵀW) = 1, column by column
/// w̃ᵢ = (WWᵀ)⁻¹wᵢ / (wᵢᵀ(WWᵀ)⁻¹wᵢ), and h^{ss} is the shrinkage except on the largest pₖ% of
/// |vᵏ| per row (support selection), which pass unchanged. θ = {γₖ, θₖ}: 2K numbers, started
/// at γ = 1/‖W̃ᵀW‖₂ and θ = γα.
///
/// With momentum, the gradient step starts from the extrapolated zᵏ = ŷᵏ + βₖ(ŷᵏ − ŷᵏ⁻¹)
/// instead of ŷᵏ (ŷ⁻¹ = ŷ⁰), and βₖ (started at 0) is learned too: 3K numbers. With adaptive
/// thresholds, instance i is shrunk by θₖ‖x_i − W zᵏ_i‖/‖x_i‖ instead of θₖ.
pub struct Alista {
    config: AlistaConfig,
    params: Params,
    layers: Vec<(Var, Var)>,
    momentum: Vec<Var>,
    w: Tensor,
    w_tilde: Tensor,
}

/// The analytic weight W̃ (m×n, row-major f64) of a dictionary W (m×n, m ≤ n, full row rank).
pub fn analytic_weight(w: &[f64], m: usize, n: usize) -> Result<Vec<f64>> {
    let mut q = vec![0.0; m * m];
    for a in 0..m {
        for b in 0..m {
            q[a * m + b] = (0..n).map(|j| w[a * n + j] * w[b * n + j]).sum();
        }
    }
    let chol = Cholesky::factor(&q, m).ok_or_else(|| {
        Error::invalid("alista: WWᵀ is singular (the dictionary needs full row rank)")
    })?;
    let mut out = vec![0.0; m * n];
    let mut col = vec![0.0; m];
    for j in 0..n {
        for i in 0..m {
            col[i] = w[i * n + j];
        }
        let d = col.clone();
        chol.solve_in_place(&mut col);
        let scale: f64 = d.iter().zip(&col).map(|(a, b)| a * b).sum();
        for i in 0..m {
            out[i * n + j] = col[i] / scale;
        }
    }
    Ok(out)
}

/// ‖W̃ᵀW‖₂ by power iteration on (W̃ᵀW)ᵀ(W̃ᵀW).
fn spectral_norm(w: &Tensor, w_tilde: &Tensor) -> Result<f64> {
    let m = w_tilde.t()?.matmul(w)?;
    let n = m.dim(0)?;
    let mut v = Tensor::ones((n, 1), DType::F64, w.device())?;
    let mut norm = 0.0;
    for _ in 0..500 {
        let u = m.t()?.matmul(&m.matmul(&v)?)?;
        let next: f64 = u.sqr()?.sum_all()?.sqrt()?.to_scalar()?;
        v = u.affine(1.0 / next, 0.0)?;
        if (next - norm).abs() <= 1e-10 * next {
            norm = next;
            break;
        }
        norm = next;
    }
    Ok(norm.sqrt())
}

impl Alista {
    /// ALISTA for `lasso`'s dictionary, with parameters of `dtype`.
    pub fn new(config: AlistaConfig, lasso: &Lasso, dtype: DType, device: &Device) -> Result<Self> {
        if config.layers == 0
            || !(config.support_step >= 0.0
                && config.support_max >= 0.0
                && config.support_max <= 100.0)
        {
            return Err(Error::invalid(
                "alista: need layers >= 1 and support percentages in [0, 100]",
            ));
        }
        let w64 = lasso.dictionary().to_dtype(DType::F64)?;
        let (m, n) = w64.dims2()?;
        let values: Vec<f64> = w64.flatten_all()?.to_vec1()?;
        let w_tilde64 = Tensor::from_vec(analytic_weight(&values, m, n)?, (m, n), &Device::Cpu)?;
        let gamma = 1.0 / spectral_norm(&w64, &w_tilde64)?;
        let mut params = Params::new();
        let mut layers = Vec::with_capacity(config.layers);
        let mut momentum = Vec::new();
        for k in 0..config.layers {
            let g = Tensor::full(gamma, 1, device)?.to_dtype(dtype)?;
            let t = Tensor::full(gamma * lasso.alpha(), 1, device)?.to_dtype(dtype)?;
            layers.push((
                params.add(format!("layer{k}.gamma"), g)?,
                params.add(format!("layer{k}.theta"), t)?,
            ));
            if config.momentum {
                let b = Tensor::zeros(1, dtype, device)?;
                momentum.push(params.add(format!("layer{k}.momentum"), b)?);
            }
        }
        Ok(Alista {
            config,
            params,
            layers,
            momentum,
            w: w64.to_dtype(dtype)?.to_device(device)?,
            w_tilde: w_tilde64.to_dtype(dtype)?.to_device(device)?,
        })
    }

    /// The analytic weight W̃ (m×n).
    pub fn analytic(&self) -> &Tensor {
        &self.w_tilde
    }

    /// The dictionary W (m×n).
    pub fn dictionary(&self) -> &Tensor {
        &self.w
    }

    /// The configuration.
    pub fn alista_config(&self) -> &AlistaConfig {
        &self.config
    }

    /// The learned numbers of each layer: (γₖ, θₖ, βₖ), βₖ only with momentum.
    pub fn layer_values(&self) -> Result<Vec<(f64, f64, Option<f64>)>> {
        let scalar = |v: &Var| -> Result<f64> {
            Ok(v.as_tensor()
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?[0])
        };
        self.layers
            .iter()
            .enumerate()
            .map(|(k, (g, t))| {
                let b = match self.momentum.get(k) {
                    Some(b) => Some(scalar(b)?),
                    None => None,
                };
                Ok((scalar(g)?, scalar(t)?, b))
            })
            .collect()
    }
}

impl Alista {
    /// The first `depth` layers.
    fn run(&self, x: &Tensor, problem: &dyn Problem, depth: usize) -> Result<Prediction> {
        let x = x.to_dtype(self.w.dtype())?;
        let (m, n) = self.w.dims2()?;
        if x.dim(1)? != m {
            return Err(Error::invalid(format!(
                "alista: contexts have {} columns, the dictionary has {m} rows",
                x.dim(1)?
            )));
        }
        // ‖x_i‖ per instance, for adaptive thresholds only.
        let x_norm = if self.config.adaptive_threshold {
            Some(x.sqr()?.sum_keepdim(1)?.sqrt()?.affine(1.0, 1e-12)?)
        } else {
            None
        };
        let mut y = Tensor::zeros((x.dim(0)?, n), x.dtype(), x.device())?;
        let mut previous = y.clone();
        let mut iterates = vec![y.clone()];
        for (k, (gamma, theta)) in self.layers.iter().enumerate().take(depth) {
            let z = extrapolate(&y, &previous, self.momentum.get(k))?;
            let r = z.matmul(&self.w.t()?)?.sub(&x)?;
            let v = z.sub(&r.matmul(&self.w_tilde)?.broadcast_mul(gamma.as_tensor())?)?;
            let keep = support_kept(k, self.config.support_step, self.config.support_max, n);
            let threshold = match &x_norm {
                Some(x_norm) => {
                    let relative = r.sqr()?.sum_keepdim(1)?.sqrt()?.broadcast_div(x_norm)?;
                    relative.broadcast_mul(theta.as_tensor())?
                }
                None => theta.as_tensor().clone(),
            };
            previous = y;
            y = shrink_selected(&v, &threshold, keep, self.config.support_rule)?;
            iterates.push(y.clone());
        }
        Ok(Prediction {
            y: problem.to_domain(&y)?,
            iterates,
            penalty: None,
        })
    }
}

impl Model for Alista {
    fn forward(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction> {
        self.run(x, problem, self.config.layers)
    }

    fn depth(&self) -> Option<usize> {
        Some(self.config.layers)
    }

    fn layer_params(&self, layer: usize) -> Vec<Var> {
        self.layers
            .get(layer)
            .map(|(g, t)| {
                let mut vars = vec![g.clone(), t.clone()];
                vars.extend(self.momentum.get(layer).cloned());
                vars
            })
            .unwrap_or_default()
    }

    fn forward_to_depth(
        &self,
        x: &Tensor,
        problem: &dyn Problem,
        depth: usize,
    ) -> Result<Prediction> {
        self.run(x, problem, depth.clamp(1, self.config.layers))
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::Alista(self.config.clone())
    }

    fn as_alista(&self) -> Option<&Alista> {
        Some(self)
    }
}
