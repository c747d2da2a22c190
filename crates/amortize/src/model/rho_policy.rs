//! The learned ADMM step-size policy of RLQP (Ichnowski et al. 2021; tutorial §6.4.5): one
//! small network, shared by all constraints, from a constraint's state to its ρ.

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Params;
use crate::linalg::{matmul, View};
use crate::solver::qp::{RhoPolicy, RHO_FEATURES};
use crate::{Error, Result};

/// Settings of [`RhoPolicyNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RhoPolicyConfig {
    /// Hidden widths (default [16, 16]).
    pub hidden: Vec<usize>,
    /// The hidden layers' activation (default `tanh`).
    pub activation: PolicyActivation,
}

/// The activation of the policy's hidden layers. The policy runs on every constraint at every
/// consultation, inside the solver loop, so its cost counts in ADMM's wall-clock: softsign
/// x/(1 + |x|) costs one division where tanh costs an exponential (about 3× the whole
/// forward pass of a 16-16 network).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyActivation {
    /// tanh(x).
    #[default]
    Tanh,
    /// x / (1 + |x|).
    Softsign,
}

impl PolicyActivation {
    fn apply(self, x: f32) -> f32 {
        match self {
            PolicyActivation::Tanh => x.tanh(),
            PolicyActivation::Softsign => x / (1.0 + x.abs()),
        }
    }
}

impl Default for RhoPolicyConfig {
    fn default() -> Self {
        RhoPolicyConfig {
            hidden: vec![16, 16],
            activation: PolicyActivation::Tanh,
        }
    }
}

/// # RLQP's policy π_θ
/// Δᵢ = π_θ(sᵢ), an MLP (tanh or softsign) applied to each constraint's features sᵢ
/// ([`crate::solver::qp::RHO_FEATURES`]); ADMM then uses ρᵢ = ρ̂ᵢ·10^Δᵢ around OSQP's own
/// choice ρ̂ᵢ ([`RhoPolicy`]). The output layer starts at zero, so the untrained policy is
/// OSQP's rule. θ lives in candle variables (for checkpoints and the ES trainer) and is read
/// into plain f64 arrays for the forward pass, which runs inside the solver loop.
pub struct RhoPolicyNet {
    config: RhoPolicyConfig,
    params: Params,
    layers: Vec<(Var, Var)>,
}

/// The layers as plain row-major (weights (in × out), biases, fan-in, fan-out) in f32.
type Plain = Vec<(Vec<f32>, Vec<f32>, usize, usize)>;

/// A snapshot of a [`RhoPolicyNet`]'s θ in plain f32 arrays: the policy as ADMM runs it, with
/// no tensor reads inside the solver loop ([`RhoPolicyNet::frozen`]). The forward pass runs in
/// f32: Δ moves ρ by factors of 10^Δ and ρ changes only when it moves by more than
/// `adaptive_rho_tolerance` (5× by default), so f32's 7 digits are far more than the decision
/// needs (a learned solve of a random QP at n = 50: 7% faster than with the f64 pass).
pub struct FrozenRhoPolicy {
    layers: Plain,
    activation: PolicyActivation,
}

impl RhoPolicyNet {
    /// A policy with θ from `rng` (U(±1/√fan_in)), output layer zero, f64.
    pub fn new(config: RhoPolicyConfig, rng: &mut StdRng, device: &Device) -> Result<Self> {
        if config.hidden.contains(&0) {
            return Err(Error::invalid(
                "rho policy: hidden widths must be at least 1",
            ));
        }
        let mut dims = vec![RHO_FEATURES];
        dims.extend(&config.hidden);
        dims.push(1);
        let mut params = Params::new();
        let mut layers = Vec::new();
        let last = dims.len() - 2;
        for (l, w) in dims.windows(2).enumerate() {
            let (fan_in, fan_out) = (w[0], w[1]);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let scale = if l == last { 0.0 } else { 1.0 };
            let mut draw = |len: usize| -> Vec<f64> {
                (0..len)
                    .map(|_| scale * rng.random_range(-bound..bound))
                    .collect()
            };
            let weight = Tensor::from_vec(draw(fan_in * fan_out), (fan_in, fan_out), device)?;
            let bias = Tensor::from_vec(draw(fan_out), fan_out, device)?;
            let wv = params.add(format!("layer{l}.weight"), weight)?;
            let bv = params.add(format!("layer{l}.bias"), bias)?;
            layers.push((wv, bv));
        }
        Ok(RhoPolicyNet {
            config,
            params,
            layers,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RhoPolicyConfig {
        &self.config
    }

    /// θ.
    pub fn params(&self) -> &Params {
        &self.params
    }

    fn plain(&self) -> Result<Plain> {
        self.layers
            .iter()
            .map(|(w, b)| {
                let (i, o) = w.dims2()?;
                Ok((
                    w.as_tensor()
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1()?,
                    b.as_tensor().to_dtype(DType::F32)?.to_vec1()?,
                    i,
                    o,
                ))
            })
            .collect()
    }

    /// θ as it is now, in plain arrays for the solver loop.
    pub fn frozen(&self) -> Result<FrozenRhoPolicy> {
        Ok(FrozenRhoPolicy {
            layers: self.plain()?,
            activation: self.config.activation,
        })
    }

    /// Δ for `m` rows of features (see [`FrozenRhoPolicy::forward_rows`]).
    pub fn forward_rows(&self, features: &[f64], m: usize) -> Result<Vec<f64>> {
        self.frozen()?.forward_rows(features, m)
    }
}

impl FrozenRhoPolicy {
    /// Δ for `m` rows of features, by the plain f32 forward pass.
    pub fn forward_rows(&self, features: &[f64], m: usize) -> Result<Vec<f64>> {
        if features.len() != m * RHO_FEATURES {
            return Err(Error::invalid(format!(
                "rho policy: {} features for {m} constraints, expected {}",
                features.len(),
                m * RHO_FEATURES
            )));
        }
        // Layer by layer over all rows at once: H ← act(H·W + b), one matrix product per
        // layer (the rows of one consultation are a batch).
        let last = self.layers.len() - 1;
        let mut cur: Vec<f32> = features.iter().map(|&v| v as f32).collect();
        let mut next = Vec::new();
        for (l, (w, b, fan_in, fan_out)) in self.layers.iter().enumerate() {
            next.clear();
            for _ in 0..m {
                next.extend_from_slice(b);
            }
            matmul(
                &mut next,
                View::new(&cur, m, *fan_in),
                View::new(w, *fan_in, *fan_out),
                true,
            );
            if l < last {
                let act = self.activation;
                next.iter_mut().for_each(|v| *v = act.apply(*v));
            }
            std::mem::swap(&mut cur, &mut next);
        }
        // The output layer has one unit: `cur` holds Δ for the m rows.
        Ok(cur.into_iter().map(f64::from).collect())
    }
}

impl RhoPolicy for FrozenRhoPolicy {
    fn adjust(&self, features: &[f64], m: usize) -> Vec<f64> {
        // Features of the wrong length (a bug) leave OSQP's rule in place.
        self.forward_rows(features, m)
            .unwrap_or_else(|_| vec![0.0; m])
    }
}

impl RhoPolicy for RhoPolicyNet {
    /// Reads θ at every call; solvers in a loop should use [`RhoPolicyNet::frozen`].
    fn adjust(&self, features: &[f64], m: usize) -> Vec<f64> {
        self.forward_rows(features, m)
            .unwrap_or_else(|_| vec![0.0; m])
    }
}
