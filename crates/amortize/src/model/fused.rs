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
//!
//! The batch is processed in blocks of [`ROW_BLOCK`] rows, forward and backward, with the
//! weight gradients summed over blocks: the activations of a block stay in the L2 cache, so
//! the elementwise passes (bias, activation, masks) cost no memory traffic. With whole
//! batches of 4096 rows each such pass streamed 2 MB through memory.

use crate::linalg::{matmul, View};
use candle_core::{Tensor, Var};

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
    /// Activations a_0 (input) … a_L (raw output) of one row block, each (rows × width).
    acts: Vec<Vec<f32>>,
    /// Backward buffers δ per layer output, one row block.
    deltas: Vec<Vec<f32>>,
    /// Raw outputs of the whole batch (what [`FusedMlp::forward`] returns).
    outputs: Vec<f32>,
    /// The output layer's W transposed (out × in), and its gradient in that layout: the
    /// output layer is narrow (solution_dim columns), where hand-written dot/axpy loops beat
    /// gemm's blocking.
    wt: Vec<f32>,
    gwt: Vec<f32>,
}

/// Outputs narrower than this use the hand-written output-layer kernels.
const NARROW: usize = 8;

/// Rows per block: 256 rows of 128-wide activations and deltas take about 0.5 MB.
pub const ROW_BLOCK: usize = 256;

/// Σ a_i b_i with eight independent accumulators (which the compiler turns into SIMD).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One row of δ_{l−1} = (δ_l W_lᵀ) ⊙ σ'(a_{l−1}) given the row of δ_l W_lᵀ in `p` and of
/// a_{l−1} in `a`; also adds the masked row into the bias gradient `gb`.
fn mask_row(act: Activation, p: &mut [f32], a: &[f32], gb: &mut [f32]) {
    match act {
        Activation::Relu => {
            for ((d, a), g) in p.iter_mut().zip(a).zip(gb.iter_mut()) {
                *d = if *a > 0.0 { *d } else { 0.0 };
                *g += *d;
            }
        }
        Activation::Tanh => {
            for ((d, a), g) in p.iter_mut().zip(a).zip(gb.iter_mut()) {
                *d *= 1.0 - a * a;
                *g += *d;
            }
        }
        _ => unreachable!("checked in from_mlp"),
    }
}

/// out[j] += Σ_rows m[row, j] for a row-major matrix of `cols` columns.
fn column_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    for row in m.chunks_exact(cols) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// y += alpha · x.
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

impl FusedMlp {
    /// Whether an activation is supported (its derivative must follow from its output).
    pub fn supports(activation: Activation) -> bool {
        matches!(activation, Activation::Relu | Activation::Tanh)
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
            outputs: Vec::new(),
            wt: Vec::new(),
            gwt: Vec::new(),
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

    /// Sizes the block buffers for blocks of `rows` rows.
    fn ensure_rows(&mut self, rows: usize) {
        if self
            .acts
            .first()
            .is_some_and(|a| a.len() == rows * self.widths[0])
        {
            return;
        }
        self.acts = self.widths.iter().map(|&w| vec![0f32; rows * w]).collect();
        self.deltas = self.widths.iter().map(|&w| vec![0f32; rows * w]).collect();
    }

    /// Refreshes wt = W_Lᵀ for the narrow output layer (after every change of θ).
    fn refresh_output_transpose(&mut self) {
        let l = self.w.len() - 1;
        let (din, dout) = (self.widths[l], self.widths[l + 1]);
        if dout >= NARROW {
            return;
        }
        self.wt.resize(din * dout, 0.0);
        for i in 0..din {
            for j in 0..dout {
                self.wt[j * din + i] = self.w[l][i * dout + j];
            }
        }
    }

    /// Forward pass of one block of `rows` rows whose inputs are already in acts[0].
    fn forward_block(&mut self, rows: usize) {
        let layers = self.w.len();
        for l in 0..layers {
            let (din, dout) = (self.widths[l], self.widths[l + 1]);
            let (prev, rest) = self.acts.split_at_mut(l + 1);
            let input = &prev[l][..rows * din];
            let out = &mut rest[0][..rows * dout];
            if l + 1 == layers && dout < NARROW {
                for (a, o) in input.chunks_exact(din).zip(out.chunks_exact_mut(dout)) {
                    for j in 0..dout {
                        o[j] = self.b[l][j] + dot(a, &self.wt[j * din..(j + 1) * din]);
                    }
                }
                continue;
            }
            matmul(
                out,
                View::new(input, rows, din),
                View::new(&self.w[l], din, dout),
                false,
            );
            // Bias and activation in one pass over the output.
            let b = &self.b[l];
            let hidden = l + 1 < layers;
            for row in out.chunks_exact_mut(dout) {
                match (hidden, self.activation) {
                    (false, _) => row.iter_mut().zip(b).for_each(|(v, b)| *v += b),
                    (true, Activation::Relu) => row
                        .iter_mut()
                        .zip(b)
                        .for_each(|(v, b)| *v = (*v + b).max(0.0)),
                    (true, Activation::Tanh) => row
                        .iter_mut()
                        .zip(b)
                        .for_each(|(v, b)| *v = (*v + b).tanh()),
                    (true, _) => unreachable!("checked in from_mlp"),
                }
            }
        }
    }

    /// Backward pass of one block: δ of the output is in deltas[L]; adds the block's weight
    /// and bias gradients into gw, gb (and gwt for a narrow output layer).
    fn backward_block(&mut self, rows: usize) {
        let layers = self.w.len();
        for l in (0..layers).rev() {
            let (din, dout) = (self.widths[l], self.widths[l + 1]);
            let (dlo, dhi) = self.deltas.split_at_mut(l + 1);
            let delta = &dhi[0][..rows * dout];
            let a_in = &self.acts[l][..rows * din];
            let narrow = l + 1 == layers && dout < NARROW;
            // dW += a_lᵀ δ (din × dout).
            if narrow {
                for (a, d) in a_in.chunks_exact(din).zip(delta.chunks_exact(dout)) {
                    for j in 0..dout {
                        axpy(d[j], a, &mut self.gwt[j * din..(j + 1) * din]);
                    }
                }
            } else {
                matmul(
                    &mut self.gw[l],
                    View::new(a_in, rows, din).t(),
                    View::new(delta, rows, dout),
                    true,
                );
            }
            if l + 1 == layers {
                // The hidden layers' bias gradients are summed while their δ is masked.
                column_sums(delta, dout, &mut self.gb[l]);
            }
            if l == 0 {
                continue;
            }
            let prev = &mut dlo[l][..rows * din];
            let gb_prev = &mut self.gb[l - 1];
            let act = self.activation;
            // δ_{l−1} = δ W_lᵀ ⊙ σ'(a_{l−1}).
            if narrow {
                for ((p, d), a) in prev
                    .chunks_exact_mut(din)
                    .zip(delta.chunks_exact(dout))
                    .zip(a_in.chunks_exact(din))
                {
                    p.fill(0.0);
                    for j in 0..dout {
                        axpy(d[j], &self.wt[j * din..(j + 1) * din], p);
                    }
                    mask_row(act, p, a, gb_prev);
                }
            } else {
                matmul(
                    prev,
                    View::new(delta, rows, dout),
                    View::new(&self.w[l], din, dout).t(),
                    false,
                );
                for (p, a) in prev.chunks_exact_mut(din).zip(a_in.chunks_exact(din)) {
                    mask_row(act, p, a, gb_prev);
                }
            }
        }
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
        let dl = *self.widths.last().unwrap_or(&0);
        self.refresh_output_transpose();
        self.ensure_rows(n.clamp(1, ROW_BLOCK));
        let mut outputs = std::mem::take(&mut self.outputs);
        outputs.resize(n * dl, 0.0);
        for (xb, ob) in x
            .chunks(ROW_BLOCK * d0)
            .zip(outputs.chunks_mut(ROW_BLOCK * dl))
        {
            let rows = xb.len() / d0;
            self.acts[0][..xb.len()].copy_from_slice(xb);
            self.forward_block(rows);
            ob.copy_from_slice(&self.acts[self.w.len()][..rows * dl]);
        }
        self.outputs = outputs;
        Ok(&self.outputs)
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
        let d0 = self.widths[0];
        if x.len() != n * d0 || n == 0 {
            return Err(Error::invalid(format!(
                "fused step: expected {n} × {d0} contexts (n ≥ 1), got {} numbers",
                x.len()
            )));
        }
        let layers = self.w.len();
        let dl = self.widths[layers];
        self.refresh_output_transpose();
        self.ensure_rows(n.min(ROW_BLOCK));
        for g in self.gw.iter_mut().chain(self.gb.iter_mut()) {
            g.fill(0.0);
        }
        self.gwt.clear();
        self.gwt
            .resize(if dl < NARROW { self.wt.len() } else { 0 }, 0.0);
        let inv_n = 1.0 / n as f32;
        let mut total = 0.0;
        for xb in x.chunks(ROW_BLOCK * d0) {
            let rows = xb.len() / d0;
            self.acts[0][..xb.len()].copy_from_slice(xb);
            self.forward_block(rows);
            let (acts, deltas) = (&self.acts, &mut self.deltas);
            let top = &mut deltas[layers][..rows * dl];
            total += objective.value_and_grad(&acts[layers][..rows * dl], xb, rows, top);
            top.iter_mut().for_each(|d| *d *= inv_n);
            self.backward_block(rows);
        }
        let loss = total / n as f64;
        if dl < NARROW {
            let din = self.widths[layers - 1];
            for i in 0..din {
                for j in 0..dl {
                    self.gw[layers - 1][i * dl + j] = self.gwt[j * din + i];
                }
            }
        }
        let sq: f64 = self
            .gw
            .iter()
            .chain(&self.gb)
            .map(|g| dot(g, g) as f64)
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
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let gi = g * scale;
                *m = b1 * *m + (1.0 - b1) * gi;
                *v = b2 * *v + (1.0 - b2) * gi * gi;
                *p -= step * *m / (v.sqrt() * inv_sqrt_c2 + eps);
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
fn set(var: &Var, data: &[f32]) -> Result<()> {
    let t = Tensor::from_slice(data, var.shape(), var.device())?.to_dtype(var.dtype())?;
    Ok(var.set(&t)?)
}
