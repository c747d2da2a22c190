//! Update rules with explicit state (the optax pattern): the same Adam trains model parameters
//! θ and, in the evaluation harness, solves problems from scratch over y.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::Result;

/// Adam (Kingma & Ba 2015) without weight decay:
/// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − lr · m̂ / (√v̂ + ε), with bias-corrected
/// m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adam {
    /// β₁ (default 0.9).
    pub beta1: f64,
    /// β₂ (default 0.999).
    pub beta2: f64,
    /// ε (default 1e-8).
    pub eps: f64,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam's moments and step count, one entry per parameter tensor.
#[derive(Debug, Clone)]
pub struct AdamState {
    /// First moments.
    pub m: Vec<Tensor>,
    /// Second moments.
    pub v: Vec<Tensor>,
    /// Number of updates taken.
    pub t: usize,
}

impl Adam {
    /// Zero moments for parameters shaped like `params`.
    pub fn init(&self, params: &[&Tensor]) -> Result<AdamState> {
        let zeros = |p: &&Tensor| p.zeros_like();
        Ok(AdamState {
            m: params
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            v: params
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            t: 0,
        })
    }

    /// Returns the new parameters p − lr·m̂/(√v̂ + ε) for gradients `grads`, updating `state`.
    pub fn update(
        &self,
        lr: f64,
        params: &[&Tensor],
        grads: &[Tensor],
        state: &mut AdamState,
    ) -> Result<Vec<Tensor>> {
        let grads: Vec<Option<&Tensor>> = grads.iter().map(Some).collect();
        self.update_present(lr, params, &grads, state)
    }

    /// [`Adam::update`] where a parameter without a gradient (`None`: it took no part in the
    /// loss) keeps its value and moments, as in PyTorch.
    pub fn update_present(
        &self,
        lr: f64,
        params: &[&Tensor],
        grads: &[Option<&Tensor>],
        state: &mut AdamState,
    ) -> Result<Vec<Tensor>> {
        state.t += 1;
        let t = state.t as i32;
        let c1 = 1.0 - self.beta1.powi(t);
        let c2 = 1.0 - self.beta2.powi(t);
        let mut out = Vec::with_capacity(params.len());
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let Some(g) = g else {
                out.push((*p).clone());
                continue;
            };
            let m = ((&state.m[i] * self.beta1)? + (*g * (1.0 - self.beta1))?)?;
            let v = ((&state.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = (v.affine(1.0 / c2, 0.0)?.sqrt()? + self.eps)?;
            let step = m.affine(lr / c1, 0.0)?.div(&denom)?;
            out.push(p.sub(&step)?);
            state.m[i] = m;
            state.v[i] = v;
        }
        Ok(out)
    }
}

/// Learning-rate schedule over a run of `total` steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout (default).
    #[default]
    Constant,
    /// Cosine decay from the base rate to `final_fraction` × base at the last step.
    Cosine {
        /// Final rate as a fraction of the base rate.
        final_fraction: f64,
    },
}

impl Schedule {
    /// The rate at `step` (0-based) of `total`.
    pub fn rate(&self, base: f64, step: usize, total: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Cosine { final_fraction } => {
                let p = if total <= 1 {
                    1.0
                } else {
                    step as f64 / (total - 1) as f64
                };
                let c = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
                base * (final_fraction + (1.0 - final_fraction) * c)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adam_first_step_moves_by_lr_times_sign() -> Result<()> {
        let p = Tensor::new(&[1.0f64, -2.0, 3.0], &Device::Cpu)?;
        let g = Tensor::new(&[0.5f64, -4.0, 1e-3], &Device::Cpu)?;
        let adam = Adam::default();
        let mut s = adam.init(&[&p])?;
        let new = adam.update(0.1, &[&p], &[g], &mut s)?;
        let got: Vec<f64> = new[0].to_vec1()?;
        // After one step m̂ = g and v̂ = g², so the step is lr·g/(|g| + ε) ≈ lr·sign(g).
        for (a, b) in got.iter().zip([0.9, -1.9, 2.9]) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn adam_minimises_a_quadratic() -> Result<()> {
        let mut p = Tensor::new(&[3.0f64, -1.0], &Device::Cpu)?;
        let adam = Adam::default();
        let mut s = adam.init(&[&p])?;
        for _ in 0..2000 {
            let g = (&p * 2.0)?;
            p = adam.update(0.05, &[&p], &[g], &mut s)?.remove(0);
        }
        let v: Vec<f64> = p.to_vec1()?;
        assert!(v.iter().all(|x| x.abs() < 1e-2), "{v:?}");
        Ok(())
    }

    #[test]
    fn cosine_schedule_ends_at_final_fraction() {
        let s = Schedule::Cosine {
            final_fraction: 0.1,
        };
        assert!((s.rate(1.0, 0, 100) - 1.0).abs() < 1e-12);
        assert!((s.rate(1.0, 99, 100) - 0.1).abs() < 1e-12);
        assert!(s.rate(1.0, 50, 100) < 0.6);
    }
}
