//! The fused CPU training path of an [`Mlp`]: a hand-written forward and backward pass with
//! `gemm` on preallocated f32 buffers, the objective loss through the problem's
//! [`CpuObjective`], and Adam in place. No tensor is allocated per step.
//!
//! This is the fast path for the common case (fully-amortized MLP, objective loss, f32, CPU).
//! It computes exactly the gradient candle's autodiff computes for the same model and loss
//! (a test checks this), but it cannot differentiate a gradient: semi-amortized methods that
//! need second order use the composite candle path.
//!
//! Layer l: a_l = σ(a_{l−1} W_l + b_l), with W_l of shape (in, out) row-major, and no σ on
//! the last layer. Backward: dW_l = a_{l−1}ᵀ δ_l, db_l = Σ_rows δ_l,
//! δ_{l−1} = (δ_l W_lᵀ) ⊙ σ'(a_{l−1}).

use candle_core::{Tensor, Var};
use gemm::Parallelism;

use super::mlp::{Activation, Mlp};
use crate::optim::Adam;
use crate::problem::CpuObjective;
use crate::{Error, Result};

/// Loss and gradient norm of one fused step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Mean objective of the batch before the update.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// The fused MLP: its own copy of θ, Adam's moments and per-batch workspaces.
#[derive(Debug, Clone)]
pub struct FusedMlp {
    widths: Vec<usize>,
    activation: Activation,
    project_output: bool,
    /// Weights (in × out, row-major) and biases per layer.
    w: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    gw: Vec<Vec<f32>>,
    gb: Vec<Vec<f32>>,
    mw: Vec<Vec<f32>>,
    vw: Vec<Vec<f32>>,
    mb: Vec<Vec<f32>>,
    vb: Vec<Vec<f32>>,
    t: usize,
    /// Activations a_0 (input) … a_L (raw output), each (n × width).
    acts: Vec<Vec<f32>>,
    /// Backward buffers δ per layer output.
    deltas: Vec<Vec<f32>>,
    batch: usize,
}

fn sigma_prime_from_output(act: Activation, a: f32) -> Option<f32> {
    match act {
        Activation::Relu => Some(if a > 0.0 { 1.0 } else { 0.0 }),
        Activation::Tanh => Some(1.0 - a * a),
        _ => None,
    }
}

impl FusedMlp {
    /// Whether an activation is supported (its derivative must follow from its output).
    pub fn supports(activation: Activation) -> bool {
        sigma_prime_from_output(activation, 0.5).is_some()
    }

    /// Copies θ out of `mlp` (f32, CPU); fresh Adam moments.
    pub fn from_mlp(mlp: &Mlp) -> Result<Self> {
        let activation = mlp.mlp_config().activation;
        if !Self::supports(activation) {
            return Err(Error::invalid(format!(
                "the fused path supports relu and tanh hidden layers, not {activation:?}"
            )));
        }
        let mut w = Vec::new();
        let mut b = Vec::new();
        for (wv, bv) in mlp.layers() {
            if !wv.device().is_cpu() {
                return Err(Error::invalid("the fused path runs on the CPU only"));
            }
            w.push(
                wv.as_tensor()
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1()?,
            );
            b.push(
                bv.as_tensor()
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?,
            );
        }
        let zeros = |v: &Vec<Vec<f32>>| v.iter().map(|x| vec![0f32; x.len()]).collect::<Vec<_>>();
        Ok(FusedMlp {
            widths: mlp.widths(),
            activation,
            project_output: mlp.mlp_config().project_output,
            gw: zeros(&w),
            gb: zeros(&b),
            mw: zeros(&w),
            vw: zeros(&w),
            mb: zeros(&b),
            vb: zeros(&b),
            w,
            b,
            t: 0,
            acts: Vec::new(),
            deltas: Vec::new(),
            batch: 0,
        })
    }

    /// Writes θ back into `mlp`'s variables.
    pub fn write_to(&self, mlp: &Mlp) -> Result<()> {
        for (l, (wv, bv)) in mlp.layers().iter().enumerate() {
            set(wv, &self.w[l])?;
            set(bv, &self.b[l])?;
        }
        Ok(())
    }

    fn ensure_batch(&mut self, n: usize) {
        if self.batch == n {
            return;
        }
        self.acts = self.widths.iter().map(|&w| vec![0f32; n * w]).collect();
        self.deltas = self.widths.iter().map(|&w| vec![0f32; n * w]).collect();
        self.batch = n;
    }

    /// The raw outputs (before the domain map) for `n` contexts `x` (n × context_dim).
    pub fn forward(&mut self, x: &[f32], n: usize) -> Result<&[f32]> {
        let d0 = self.widths[0];
        if x.len() != n * d0 {
            return Err(Error::invalid(format!(
                "fused forward: expected {n} × {d0} contexts, got {} numbers",
                x.len()
            )));
        }
        self.ensure_batch(n);
        self.acts[0].copy_from_slice(x);
        let layers = self.w.len();
        for l in 0..layers {
            let (din, dout) = (self.widths[l], self.widths[l + 1]);
            let (prev, rest) = self.acts.split_at_mut(l + 1);
            let input = &prev[l];
            let out = &mut rest[0];
            for row in out.chunks_exact_mut(dout) {
                row.copy_from_slice(&self.b[l]);
            }
            matmul(
                out,
                View::new(input, n, din),
                View::new(&self.w[l], din, dout),
                true,
            );
            if l + 1 < layers {
                match self.activation {
                    Activation::Relu => out.iter_mut().for_each(|v| *v = v.max(0.0)),
                    Activation::Tanh => out.iter_mut().for_each(|v| *v = v.tanh()),
                    _ => unreachable!("checked in from_mlp"),
                }
            }
        }
        Ok(&self.acts[layers])
    }

    /// One training step on the objective loss L = mean f(π(ŷθ(x)); x): forward, backward,
    /// optional clipping of the global gradient norm to `clip`, and an Adam update with rate
    /// `lr`. Returns the loss and gradient norm before the update; when either is not finite
    /// θ is left unchanged.
    pub fn train_step(
        &mut self,
        x: &[f32],
        n: usize,
        objective: &dyn CpuObjective,
        adam: &Adam,
        lr: f64,
        clip: Option<f64>,
    ) -> Result<StepStats> {
        self.forward(x, n)?;
        let layers = self.w.len();
        let loss = {
            let (acts, deltas) = (&self.acts, &mut self.deltas);
            objective.value_and_grad(&acts[layers], &acts[0], n, &mut deltas[layers]) / n as f64
        };
        let inv_n = 1.0 / n as f32;
        self.deltas[layers].iter_mut().for_each(|d| *d *= inv_n);
        for l in (0..layers).rev() {
            let (din, dout) = (self.widths[l], self.widths[l + 1]);
            let (dlo, dhi) = self.deltas.split_at_mut(l + 1);
            let delta = &dhi[0];
            // dW = a_lᵀ δ (din × dout); db = column sums of δ.
            matmul(
                &mut self.gw[l],
                View::new(&self.acts[l], n, din).t(),
                View::new(delta, n, dout),
                false,
            );
            let gb = &mut self.gb[l];
            gb.iter_mut().for_each(|v| *v = 0.0);
            for row in delta.chunks_exact(dout) {
                for (g, d) in gb.iter_mut().zip(row) {
                    *g += d;
                }
            }
            if l > 0 {
                let prev = &mut dlo[l];
                // δ_{l−1} = δ W_lᵀ ⊙ σ'(a_{l−1}).
                matmul(
                    prev,
                    View::new(delta, n, dout),
                    View::new(&self.w[l], din, dout).t(),
                    false,
                );
                let act = self.activation;
                for (d, a) in prev.iter_mut().zip(&self.acts[l]) {
                    *d *= sigma_prime_from_output(act, *a).unwrap_or(0.0);
                }
            }
        }
        let sq: f64 = self
            .gw
            .iter()
            .chain(&self.gb)
            .flat_map(|g| g.iter())
            .map(|&v| (v as f64) * (v as f64))
            .sum();
        let grad_norm = sq.sqrt();
        if !(loss.is_finite() && grad_norm.is_finite()) {
            return Ok(StepStats { loss, grad_norm });
        }
        let scale = match clip {
            Some(c) if grad_norm > c => (c / grad_norm) as f32,
            _ => 1.0,
        };
        self.t += 1;
        let t = self.t as i32;
        let (b1, b2) = (adam.beta1 as f32, adam.beta2 as f32);
        let c1 = 1.0 - adam.beta1.powi(t);
        let c2 = 1.0 - adam.beta2.powi(t);
        let step = (lr / c1) as f32;
        let inv_sqrt_c2 = (1.0 / c2.sqrt()) as f32;
        let eps = adam.eps as f32;
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for i in 0..p.len() {
                let gi = g[i] * scale;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                p[i] -= step * m[i] / (v[i].sqrt() * inv_sqrt_c2 + eps);
            }
        };
        for l in 0..layers {
            update(
                &mut self.w[l],
                &self.gw[l],
                &mut self.mw[l],
                &mut self.vw[l],
            );
            update(
                &mut self.b[l],
                &self.gb[l],
                &mut self.mb[l],
                &mut self.vb[l],
            );
        }
        Ok(StepStats { loss, grad_norm })
    }

    /// ŷθ(x) for a batch of contexts, mapped onto the problem's domain: the same numbers as
    /// [`Mlp::forward`](super::Model::forward) (up to float rounding), without building a graph.
    pub fn predict(&mut self, x: &Tensor, problem: &dyn crate::problem::Problem) -> Result<Tensor> {
        let n = x.dim(0)?;
        let xs: Vec<f32> = x
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let out = *self.widths.last().unwrap_or(&0);
        let raw = Tensor::from_slice(self.forward(&xs, n)?, (n, out), x.device())?;
        let raw = raw.to_dtype(x.dtype())?;
        if self.project_output {
            problem.to_domain(&raw)
        } else {
            Ok(raw)
        }
    }

    /// The gradients of the last step, per layer (weights, biases), before clipping.
    pub fn last_gradients(&self) -> (&[Vec<f32>], &[Vec<f32>]) {
        (&self.gw, &self.gb)
    }
}

/// A row-major `rows × cols` matrix, read as itself or (after [`View::t`]) as its transpose.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a> View<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix buffer size");
        View {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    fn t(self) -> Self {
        View {
            transposed: !self.transposed,
            ..self
        }
    }

    /// (logical rows, logical cols, column stride, row stride).
    fn layout(&self) -> (usize, usize, isize, isize) {
        if self.transposed {
            (self.cols, self.rows, self.cols as isize, 1)
        } else {
            (self.rows, self.cols, 1, self.cols as isize)
        }
    }
}

/// dst (m × n, row-major) = lhs · rhs, or dst + lhs · rhs when `accumulate`; one thread.
fn matmul(dst: &mut [f32], lhs: View, rhs: View, accumulate: bool) {
    let (m, k, lhs_cs, lhs_rs) = lhs.layout();
    let (k2, n, rhs_cs, rhs_rs) = rhs.layout();
    assert!(k == k2 && dst.len() == m * n, "matmul shapes");
    // SAFETY: the asserts above make every index the strides reach lie inside its buffer, and
    // `dst` is a distinct mutable buffer.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

fn set(var: &Var, data: &[f32]) -> Result<()> {
    let t = Tensor::from_slice(data, var.shape(), var.device())?.to_dtype(var.dtype())?;
    Ok(var.set(&t)?)
}
