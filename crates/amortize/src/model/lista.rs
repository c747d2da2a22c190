//! Learned ISTA (Gregor & LeCun 2010; tutorial §6.2.2): a semi-amortized sparse-coding model
//! whose layers are ISTA steps with learned weights.

use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use super::{copy_params, Alista, Model, ModelConfig, Params, Prediction};
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
    /// Coupled weights (LISTA-CP, Chen et al. 2018): Gₖ = I − WᵀFₖ is implied, so a layer
    /// is ŷ ← h_β(ŷ − (ŷWᵀ − x)Fₖ) and learns only Fₖ and βₖ (default false).
    pub coupled: bool,
    /// Support selection (LISTA-SS, Chen et al. 2018): layer k lets the largest
    /// min(k·`support_step`, `support_max`) percent of each code's entries through
    /// unthresholded (default 0 = off).
    pub support_step: f64,
    /// The cap of that percentage (default 13).
    pub support_max: f64,
    /// Which of the largest entries pass unthresholded (default: all of them).
    pub support_rule: SupportRule,
    /// A learned momentum bₖ per layer: layer k starts from zᵏ = ŷᵏ + bₖ(ŷᵏ − ŷᵏ⁻¹) instead
    /// of ŷᵏ, with bₖ initialised to FISTA's (tₖ − 1)/tₖ₊₁, so the untrained model is FISTA
    /// (default false).
    pub momentum: bool,
}

impl Default for ListaConfig {
    fn default() -> Self {
        ListaConfig {
            layers: 16,
            tied: false,
            continuation: 0,
            coupled: false,
            support_step: 0.0,
            support_max: 13.0,
            support_rule: SupportRule::default(),
            momentum: false,
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
/// Variants of Chen et al. (2018): `coupled` (LISTA-CP) ties Gₖ = I − WᵀFₖ, so a layer is
/// ŷ ← h_β(ŷ − (ŷWᵀ − x)Fₖ), the form their convergence theorem needs; `support_step`
/// (LISTA-SS) passes the largest entries of each code unthresholded. Both together are
/// LISTA-CPSS, of which [`super::Alista`] is the analytic-weight version.
///
/// With `momentum`, layer k applies to zᵏ = ŷᵏ + bₖ(ŷᵏ − ŷᵏ⁻¹) (ŷ⁻¹ = ŷ⁰) with a learned bₖ
/// per layer, initialised to FISTA's (tₖ − 1)/tₖ₊₁ (t₀ = 1, tₖ₊₁ = (1 + √(1 + 4tₖ²))/2), so the
/// untrained model is FISTA without restart (Beck & Teboulle 2009), as HyperLISTA adds momentum
/// to ALISTA.
///
/// The prediction's `iterates` are ŷ⁰ … ŷᴷ (and the continuation's), for the iterate-summed
/// loss and per-layer evaluation.
pub struct Lista {
    config: ListaConfig,
    params: Params,
    layers: Vec<(Var, Option<Var>, Var)>,
    momentum: Vec<Var>,
    ista: (Tensor, Tensor, f64),
    w: Tensor,
}

/// The number of entries of an n-vector that layer `layer` (0-based) lets through
/// unthresholded under support selection: ⌊min((layer+1)·step, max)% · n⌋.
pub(crate) fn support_kept(layer: usize, step: f64, max: f64, n: usize) -> usize {
    let percent = ((layer + 1) as f64 * step).min(max);
    (percent / 100.0 * n as f64).floor() as usize
}

/// Which entries support selection lets through unthresholded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SupportRule {
    /// Among the `keep` largest |vᵢ| of its row, whatever the threshold: h^{ss} as written in
    /// Chen et al. 2018. The default; it measured better on noiseless recovery (see
    /// docs/reproductions/sparse-coding.md).
    #[default]
    Largest,
    /// Among the `keep` largest |vᵢ| of its row *and* above its threshold, |vᵢ| > βᵢ: the rule
    /// of Chen et al.'s reference code (entries below the threshold are still zeroed).
    LargestAboveThreshold,
}

/// Shrinkage with support selection (h^{ss}_β of Chen et al. 2018): the entries `rule`
/// selects among the `keep` largest |v| of each row pass unchanged, every other entry is
/// shrunk by `beta`.
pub fn shrink_selected(
    v: &Tensor,
    beta: &Tensor,
    keep: usize,
    rule: SupportRule,
) -> Result<Tensor> {
    let shrunk = shrink(v, beta)?;
    if keep == 0 {
        return Ok(shrunk);
    }
    let magnitude = v.abs()?.detach();
    let n = magnitude.dim(D::Minus1)?;
    // The keep-th largest |v| of each row: entries at or above it are the selected ones
    // (ties, of probability zero for continuous data, may select a few more).
    let (sorted, _) = magnitude.sort_last_dim(false)?;
    let cut = sorted.narrow(D::Minus1, keep.min(n) - 1, 1)?;
    let mut pass = magnitude.broadcast_ge(&cut)?;
    if rule == SupportRule::LargestAboveThreshold {
        pass = pass.mul(&magnitude.broadcast_gt(&beta.detach())?)?;
    }
    Ok(pass.where_cond(v, &shrunk)?)
}

/// h_β(v) = relu(v − β) − relu(−v − β), β broadcast over rows.
pub fn shrink(v: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let pos = v.broadcast_sub(beta)?.relu()?;
    let neg = v.neg()?.broadcast_sub(beta)?.relu()?;
    Ok(pos.sub(&neg)?)
}

/// The heavy-ball extrapolation z = ŷ + b(ŷ − ŷ_prev) of a layer with a learned momentum b
/// (a 1-element parameter), or ŷ itself without one.
pub(crate) fn extrapolate(y: &Tensor, previous: &Tensor, momentum: Option<&Var>) -> Result<Tensor> {
    match momentum {
        Some(b) => Ok(y.add(&y.sub(previous)?.broadcast_mul(b.as_tensor())?)?),
        None => Ok(y.clone()),
    }
}

impl Lista {
    /// LISTA for `lasso`, initialised from ISTA, with parameters of `dtype`.
    pub fn new(config: ListaConfig, lasso: &Lasso, dtype: DType, device: &Device) -> Result<Self> {
        if config.layers == 0 {
            return Err(Error::invalid("lista: layers must be at least 1"));
        }
        if !(config.support_step >= 0.0 && config.support_max >= 0.0 && config.support_max <= 100.0)
        {
            return Err(Error::invalid(
                "lista: support percentages must lie in [0, 100]",
            ));
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
            let fk = params.add(format!("layer{k}.F"), f.clone())?;
            let gk = if config.coupled {
                None
            } else {
                Some(params.add(format!("layer{k}.G"), g.clone())?)
            };
            layers.push((fk, gk, params.add(format!("layer{k}.beta"), beta.clone())?));
        }
        let mut momentum = Vec::new();
        if config.momentum {
            let mut t = 1.0f64;
            for k in 0..config.layers {
                let t_next = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0;
                let b = Tensor::full((t - 1.0) / t_next, 1, device)?.to_dtype(dtype)?;
                momentum.push(params.add(format!("layer{k}.momentum"), b)?);
                t = t_next;
            }
        }
        Ok(Lista {
            config,
            params,
            layers,
            momentum,
            ista: (f, g, lasso.alpha() / l),
            w,
        })
    }

    /// The configuration.
    pub fn lista_config(&self) -> &ListaConfig {
        &self.config
    }

    /// θ ← the LISTA that computes exactly what the trained ALISTA `source` computes, so that
    /// LISTA's training starts where ALISTA's ended (the analytic start). ALISTA's layer
    /// vᵏ = zᵏ − γₖ(zᵏWᵀ − x)W̃ (Liu et al. 2019) is xFₖ + zᵏGₖ with Fₖ = γₖW̃ and
    /// Gₖ = I − γₖWᵀW̃ (a coupled LISTA keeps only Fₖ; its Gₖ = I − WᵀFₖ is the same), and its
    /// threshold θₖ becomes βₖ = θₖ·1. ALISTA's momentum, where present, is LISTA's bₖ.
    /// The two must agree on depth, momentum and support selection, and share the dictionary;
    /// ALISTA's adaptive thresholds have no LISTA form, and a tied LISTA of more than one
    /// layer cannot hold per-layer steps.
    pub fn init_from_alista(&self, source: &Alista) -> Result<()> {
        let a = source.alista_config();
        let c = &self.config;
        let refuse = |why: String| -> Result<()> {
            Err(Error::invalid(format!(
                "lista: cannot start from the given alista model: {why}"
            )))
        };
        if a.layers != c.layers {
            return refuse(format!(
                "it has {} layers, this model {}",
                a.layers, c.layers
            ));
        }
        if c.tied && c.layers > 1 {
            return refuse("a tied LISTA cannot hold per-layer step sizes".into());
        }
        if a.adaptive_threshold {
            return refuse("its adaptive thresholds have no LISTA form".into());
        }
        if a.momentum != c.momentum {
            return refuse("momentum must be on in both models or in neither".into());
        }
        let (m, n) = self.w.dims2()?;
        let keeps = |step, max| {
            (0..c.layers)
                .map(move |k| support_kept(k, step, max, n))
                .collect::<Vec<_>>()
        };
        let (ours, theirs) = (
            keeps(c.support_step, c.support_max),
            keeps(a.support_step, a.support_max),
        );
        if ours != theirs || (ours.iter().any(|&k| k > 0) && a.support_rule != c.support_rule) {
            return refuse(format!(
                "support selection differs (entries kept per layer: {theirs:?} there, {ours:?} here)"
            ));
        }
        let w = self.w.to_dtype(DType::F64)?;
        let their_w = source.dictionary().to_dtype(DType::F64)?;
        if their_w.dims2()? != (m, n) {
            return refuse(format!(
                "its dictionary is {:?}, this problem's {m}×{n}",
                their_w.dims2()?
            ));
        }
        let diff: f64 = (&w - &their_w)?.abs()?.max_all()?.to_scalar()?;
        if diff.is_nan() || diff > 1e-5 {
            return refuse(format!(
                "its dictionary differs from this problem's (max |difference| {diff:.3e})"
            ));
        }
        let dtype = self.ista.0.dtype();
        let device = self.w.device();
        let w_tilde = source.analytic().to_dtype(DType::F64)?;
        let wt_w = w.t()?.matmul(&w_tilde)?;
        let eye = Tensor::eye(n, DType::F64, w.device())?;
        for (k, (gamma, theta, b)) in source.layer_values()?.into_iter().enumerate() {
            let (f, g, beta) = &self.layers[k];
            f.set(
                &w_tilde
                    .affine(gamma, 0.0)?
                    .to_dtype(dtype)?
                    .to_device(device)?,
            )?;
            if let Some(g) = g {
                let gk = eye.sub(&wt_w.affine(gamma, 0.0)?)?;
                g.set(&gk.to_dtype(dtype)?.to_device(device)?)?;
            }
            beta.set(&Tensor::full(theta, n, device)?.to_dtype(dtype)?)?;
            if let (Some(b), Some(var)) = (b, self.momentum.get(k)) {
                var.set(&Tensor::full(b, 1, device)?.to_dtype(dtype)?)?;
            }
        }
        Ok(())
    }

    /// The same model with another number of continuation steps.
    pub fn with_continuation(mut self, steps: usize) -> Self {
        self.config.continuation = steps;
        self
    }
}

impl Lista {
    /// `depth` learned layers followed by `continuation` plain ISTA steps.
    fn run(
        &self,
        x: &Tensor,
        problem: &dyn Problem,
        depth: usize,
        continuation: usize,
    ) -> Result<Prediction> {
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
        let mut previous = y.clone();
        let mut iterates = vec![y.clone()];
        for k in 0..depth {
            let (f, g, beta) = &self.layers[k.min(self.layers.len() - 1)];
            let z = extrapolate(&y, &previous, self.momentum.get(k))?;
            let v = match g {
                Some(g) => x.matmul(f.as_tensor())?.add(&z.matmul(g.as_tensor())?)?,
                None => {
                    let r = z.matmul(&self.w.t()?)?.sub(&x)?;
                    z.sub(&r.matmul(f.as_tensor())?)?
                }
            };
            let keep = support_kept(k, self.config.support_step, self.config.support_max, n);
            let next = shrink_selected(&v, beta.as_tensor(), keep, self.config.support_rule)?;
            previous = std::mem::replace(&mut y, next);
            iterates.push(y.clone());
        }
        let (f, g, beta) = &self.ista;
        let beta = Tensor::full(*beta, n, x.device())?.to_dtype(dtype)?;
        let xf = x.matmul(f)?;
        for _ in 0..continuation {
            y = shrink(&xf.add(&y.matmul(g)?)?, &beta)?;
            iterates.push(y.clone());
        }
        Ok(Prediction {
            y: problem.to_domain(&y)?,
            iterates,
            penalty: None,
        })
    }
}

impl Model for Lista {
    fn forward(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction> {
        self.run(x, problem, self.config.layers, self.config.continuation)
    }

    fn depth(&self) -> Option<usize> {
        Some(self.config.layers)
    }

    fn layer_params(&self, layer: usize) -> Vec<Var> {
        let (f, g, beta) = &self.layers[layer.min(self.layers.len() - 1)];
        let mut v = vec![f.clone()];
        v.extend(g.clone());
        v.push(beta.clone());
        v.extend(self.momentum.get(layer).cloned());
        v
    }

    fn forward_to_depth(
        &self,
        x: &Tensor,
        problem: &dyn Problem,
        depth: usize,
    ) -> Result<Prediction> {
        self.run(x, problem, depth.clamp(1, self.config.layers), 0)
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::Lista(self.config.clone())
    }

    /// From an [`Alista`] by [`Lista::init_from_alista`]; from a LISTA of the same
    /// configuration by copying θ.
    fn init_from(&self, source: &dyn Model) -> Result<()> {
        match source.as_alista() {
            Some(a) => self.init_from_alista(a),
            None => copy_params(self, source),
        }
    }
}
