//! Update rules with explicit state (the optax pattern): the same Adam trains model parameters
//! θ and, in the evaluation harness, solves problems from scratch over y.

use std::cell::RefCell;

use candle_core::{CpuStorage, Layout, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

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
        let c = self.step_constants(lr, state.t, 1.0);
        let mut out = Vec::with_capacity(params.len());
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let Some(g) = g else {
                out.push((*p).clone());
                continue;
            };
            let (p_new, m, v) = self.tensor_step(&c, p, g, &state.m[i], &state.v[i])?;
            out.push(p_new);
            state.m[i] = m;
            state.v[i] = v;
        }
        Ok(out)
    }

    /// The scalars of step `t` (1-based) at rate `lr`, gradients multiplied by `grad_scale`.
    fn step_constants(&self, lr: f64, t: usize, grad_scale: f64) -> AdamStep {
        let t = t as i32;
        AdamStep {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            c1: 1.0 - self.beta1.powi(t),
            c2: 1.0 - self.beta2.powi(t),
            grad_scale,
        }
    }

    /// One tensor's step from tensor ops (any device, differentiable): returns the new
    /// (p, m, v).
    fn tensor_step(
        &self,
        c: &AdamStep,
        p: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let scaled;
        let g = if c.grad_scale == 1.0 {
            g
        } else {
            scaled = g.affine(c.grad_scale, 0.0)?;
            &scaled
        };
        let m = ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
        let v = ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
        let denom = (v.affine(1.0 / c.c2, 0.0)?.sqrt()? + self.eps)?;
        let step = m.affine(c.lr / c.c1, 0.0)?.div(&denom)?;
        Ok((p.sub(&step)?, m, v))
    }
}

impl Adam {
    /// Adam on the variables `vars` in place, with each present gradient multiplied by
    /// `grad_scale` first (gradient clipping). The same update as [`Adam::update_present`]
    /// followed by `Var::set`, but on the CPU in one fused pass per tensor that reads p, g, m, v
    /// and writes p, m, v where they are, with no temporaries: for a model of millions of
    /// parameters the functional form's thirteen allocating passes cost as much as the
    /// forward and backward passes. Other devices, dtypes or layouts take the functional path.
    pub fn update_vars(
        &self,
        lr: f64,
        vars: &[Var],
        grads: &[Option<&Tensor>],
        grad_scale: f64,
        state: &mut AdamState,
    ) -> Result<()> {
        if vars.len() != grads.len() || vars.len() != state.m.len() {
            return Err(Error::invalid(format!(
                "adam: {} variables, {} gradients and {} moment tensors",
                vars.len(),
                grads.len(),
                state.m.len()
            )));
        }
        state.t += 1;
        let c = self.step_constants(lr, state.t, grad_scale);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let p = var.as_tensor();
            let (m, v) = (&state.m[i], &state.v[i]);
            if fusable(&[p, g, m, v]) {
                fused_update(&c, p, g, m, v)?;
            } else {
                let (p_new, m, v) = self.tensor_step(&c, p, g, m, v)?;
                var.set(&p_new.detach())?;
                state.m[i] = m;
                state.v[i] = v;
            }
        }
        Ok(())
    }
}

/// Σ tᵢ² of a tensor, in f64: one pass over the data on the CPU for a contiguous f32/f64
/// tensor, candle's `sqr().sum_all()` otherwise.
pub fn sum_of_squares(t: &Tensor) -> Result<f64> {
    if fusable(&[t]) {
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let (a, b) = layout
                .contiguous_offsets()
                .ok_or_else(|| Error::invalid("sum_of_squares: layout is not contiguous"))?;
            return Ok(match cpu {
                CpuStorage::F32(d) => lane_sum_of_squares(&d[a..b], f64::from),
                CpuStorage::F64(d) => lane_sum_of_squares(&d[a..b], |x| x),
                _ => unreachable!("fusable admits f32 and f64 only"),
            });
        }
    }
    Ok(t.sqr()?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar()?)
}

/// Σ xᵢ² in f64 over eight independent accumulators, so the loop vectorises (one running sum
/// is a chain of dependent additions).
fn lane_sum_of_squares<T: Copy>(d: &[T], to_f64: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = d.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let x = to_f64(x);
            *a += x * x;
        }
    }
    let tail: f64 = rest.iter().map(|&x| to_f64(x) * to_f64(x)).sum();
    acc.iter().sum::<f64>() + tail
}

/// The scalars of one Adam step: rate, β₁, β₂, ε, the bias corrections c₁ = 1 − β₁ᵗ and
/// c₂ = 1 − β₂ᵗ, and the gradient scale (clipping).
struct AdamStep {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    c1: f64,
    c2: f64,
    grad_scale: f64,
}

/// Whether the tensors are all on the CPU, contiguous, of one shape and one dtype (f32/f64),
/// so the fused passes apply.
fn fusable(ts: &[&Tensor]) -> bool {
    let first = ts[0];
    matches!(
        first.dtype(),
        candle_core::DType::F32 | candle_core::DType::F64
    ) && ts.iter().all(|t| {
        t.device().is_cpu()
            && t.dtype() == first.dtype()
            && t.shape() == first.shape()
            && t.is_contiguous()
    })
}

/// An in-place op from a closure called once: lets the fused step hold the three mutable
/// storages (p, m, v) at once by nesting candle's in-place ops.
struct InPlace<F>(RefCell<Option<F>>);

impl<F> InPlace<F> {
    fn new(f: F) -> Self {
        InPlace(RefCell::new(Some(f)))
    }
}

impl<F> candle_core::InplaceOp1 for InPlace<F>
where
    F: FnOnce(&mut CpuStorage, &Layout) -> candle_core::Result<()>,
{
    fn name(&self) -> &'static str {
        "fused-adam"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let f = self
            .0
            .borrow_mut()
            .take()
            .ok_or_else(|| candle_core::Error::Msg("fused-adam: op applied twice".into()))?;
        f(storage, layout)
    }
}

/// The contiguous range of a layout (checked by [`fusable`] beforehand).
fn range(layout: &Layout) -> candle_core::Result<std::ops::Range<usize>> {
    layout
        .contiguous_offsets()
        .map(|(a, b)| a..b)
        .ok_or_else(|| candle_core::Error::Msg("fused-adam: layout is not contiguous".into()))
}

/// p, m, v ← Adam's new values from g, in place.
fn fused_update(c: &AdamStep, p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<()> {
    let (g_storage, g_layout) = g.storage_and_layout();
    let candle_core::Storage::Cpu(g_cpu) = &*g_storage else {
        return Err(Error::invalid("fused adam: gradient is not on the CPU"));
    };
    let g_range = range(g_layout)?;
    p.inplace_op1(&InPlace::new(|ps: &mut CpuStorage, pl: &Layout| {
        m.inplace_op1(&InPlace::new(|ms: &mut CpuStorage, ml: &Layout| {
            v.inplace_op1(&InPlace::new(|vs: &mut CpuStorage, vl: &Layout| {
                let (pr, mr, vr) = (range(pl)?, range(ml)?, range(vl)?);
                match (ps, g_cpu, ms, vs) {
                    (
                        CpuStorage::F32(p),
                        CpuStorage::F32(g),
                        CpuStorage::F32(m),
                        CpuStorage::F32(v),
                    ) => {
                        adam_in_place(c, &mut p[pr], &g[g_range], &mut m[mr], &mut v[vr]);
                        Ok(())
                    }
                    (
                        CpuStorage::F64(p),
                        CpuStorage::F64(g),
                        CpuStorage::F64(m),
                        CpuStorage::F64(v),
                    ) => {
                        adam_in_place(c, &mut p[pr], &g[g_range], &mut m[mr], &mut v[vr]);
                        Ok(())
                    }
                    _ => Err(candle_core::Error::Msg(
                        "fused-adam: mixed or unsupported dtypes".into(),
                    )),
                }
            }))
        }))
    }))?;
    Ok(())
}

/// The float types of the in-place kernel.
trait AdamFloat: candle_core::WithDType {
    fn sqrt(self) -> Self;
}

impl AdamFloat for f32 {
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl AdamFloat for f64 {
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// p, m, v ← one Adam step from g, in place over plain slices, with the scalars rounded once
/// to T (as candle's ops of that dtype do): m ← β₁m + (1−β₁)sg, v ← β₂v + (1−β₂)(sg)²,
/// p ← p − (lr/c₁)·m/(√(v/c₂) + ε), the order of candle's ops in [`Adam::update_present`].
/// The fused MLP path keeps its own f32 loop, which rounds differently (1 − β in f32,
/// √v·(1/√c₂)); over the sphere run's 100,000 steps that shifts the result, so they stay apart.
fn adam_in_place<T: AdamFloat>(c: &AdamStep, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
    let (b1, b2) = (T::from_f64(c.beta1), T::from_f64(c.beta2));
    let (one_b1, one_b2) = (T::from_f64(1.0 - c.beta1), T::from_f64(1.0 - c.beta2));
    let (inv_c2, step, eps, s) = (
        T::from_f64(1.0 / c.c2),
        T::from_f64(c.lr / c.c1),
        T::from_f64(c.eps),
        T::from_f64(c.grad_scale),
    );
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * s;
        *m = b1 * *m + one_b1 * g;
        *v = b2 * *v + one_b2 * (g * g);
        *p -= step * *m / ((*v * inv_c2).sqrt() + eps);
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

    /// The fused in-place update (and its fallback for a non-contiguous gradient) agrees with
    /// the functional one over several steps, with clipping's scale, in f32 and f64.
    #[test]
    fn fused_update_matches_functional_update() -> Result<()> {
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            for transposed in [false, true] {
                let dev = Device::Cpu;
                let p0 = Tensor::randn(0f32, 1.0, (5, 7), &dev)?.to_dtype(dtype)?;
                let var = Var::from_tensor(&p0)?;
                let adam = Adam::default();
                let mut fused = adam.init(&[var.as_tensor()])?;
                let mut functional = adam.init(&[&p0])?;
                let mut p = p0.clone();
                for step in 0..4 {
                    let g = Tensor::randn(0f32, 1.0, (5, 7), &dev)?.to_dtype(dtype)?;
                    let g_in = if transposed {
                        g.t()?.contiguous()?.t()?
                    } else {
                        g.clone()
                    };
                    assert_eq!(g_in.is_contiguous(), !transposed);
                    let scale = 0.5 + step as f64;
                    adam.update_vars(
                        1e-2,
                        std::slice::from_ref(&var),
                        &[Some(&g_in)],
                        scale,
                        &mut fused,
                    )?;
                    p = adam
                        .update(1e-2, &[&p], &[(&g * scale)?], &mut functional)?
                        .remove(0);
                }
                let diff = (var.as_tensor() - &p)?
                    .abs()?
                    .max_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
                let moved = (var.as_tensor() - &p0)?
                    .abs()?
                    .max_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
                assert!(diff < 1e-6, "{dtype:?} transposed={transposed}: {diff}");
                assert!(moved > 1e-2, "the update must move the parameters: {moved}");
            }
        }
        Ok(())
    }

    #[test]
    fn sum_of_squares_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for n in [0usize, 3, 8, 1001] {
            let t = Tensor::randn(0f32, 1.0, n, &dev)?;
            let want: f64 = t
                .to_vec1::<f32>()?
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum();
            let got = sum_of_squares(&t)?;
            assert!(
                (got - want).abs() <= 1e-9 * want.max(1.0),
                "{n}: {got} vs {want}"
            );
            let t64 = t.to_dtype(candle_core::DType::F64)?.reshape((1, n))?.t()?;
            assert!((sum_of_squares(&t64)? - want).abs() <= 1e-9 * want.max(1.0));
        }
        Ok(())
    }

    #[test]
    fn update_vars_rejects_mismatched_lengths() -> Result<()> {
        let p = Var::from_tensor(&Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu)?)?;
        let adam = Adam::default();
        let mut s = adam.init(&[p.as_tensor()])?;
        let err = adam.update_vars(0.1, &[p], &[], 1.0, &mut s).unwrap_err();
        assert!(
            err.to_string().contains("1 variables, 0 gradients"),
            "{err}"
        );
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
