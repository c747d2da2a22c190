//! A gated recurrent unit cell (Cho et al. 2014), the recurrent part of learned update rules
//! and of NeuralFP's acceleration model.

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;

use super::Params;
use crate::Result;

/// σ(v) = 1 / (1 + e^{−v}) = ½(1 + tanh(v/2)) from tensor ops (differentiable to any
/// order). The tanh form keeps the gradient finite for large |v|: through 1/(1 + e^{−v}) it is
/// 0·∞ = NaN once e^{−v} overflows (v < −88 in f32).
pub fn sigmoid(v: &Tensor) -> Result<Tensor> {
    Ok(v.affine(0.5, 0.0)?.tanh()?.affine(0.5, 0.5)?)
}

/// h⁺ = (1 − z) ∘ h + z ∘ tanh(W_c u + b_c + r ∘ (U_c h)), with update gate
/// z = σ(W_z u + U_z h + b_z) and reset gate r = σ(W_r u + U_r h + b_r); rows are sequences.
#[derive(Debug, Clone)]
pub struct GruCell {
    wx: Var,
    wh: Var,
    b: Var,
    hidden: usize,
}

impl GruCell {
    /// A cell for inputs of width `input` and a hidden state of width `hidden`, weights drawn
    /// from U(−1/√hidden, 1/√hidden) (PyTorch's default), registered in `params` as
    /// `{prefix}.wx`, `{prefix}.wh`, `{prefix}.b`.
    pub fn new(
        params: &mut Params,
        prefix: &str,
        input: usize,
        hidden: usize,
        dtype: DType,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (hidden as f64).sqrt();
        let mut uniform = |rows: usize, cols: usize| -> Result<Tensor> {
            let v: Vec<f64> = (0..rows * cols)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            Ok(Tensor::from_vec(v, (rows, cols), device)?.to_dtype(dtype)?)
        };
        let wx = params.add(format!("{prefix}.wx"), uniform(input, 3 * hidden)?)?;
        let wh = params.add(format!("{prefix}.wh"), uniform(hidden, 3 * hidden)?)?;
        let b = params.add(
            format!("{prefix}.b"),
            Tensor::zeros(3 * hidden, dtype, device)?,
        )?;
        Ok(GruCell { wx, wh, b, hidden })
    }

    /// The hidden width.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// One step: inputs `(n, input)` and state `(n, hidden)` to the new state.
    pub fn step(&self, u: &Tensor, h: &Tensor) -> Result<Tensor> {
        let hd = self.hidden;
        let gx = u
            .matmul(self.wx.as_tensor())?
            .broadcast_add(self.b.as_tensor())?;
        let gh = h.matmul(self.wh.as_tensor())?;
        let z = sigmoid(&gx.narrow(1, 0, hd)?.add(&gh.narrow(1, 0, hd)?)?)?;
        let r = sigmoid(&gx.narrow(1, hd, hd)?.add(&gh.narrow(1, hd, hd)?)?)?;
        let candidate = gx
            .narrow(1, 2 * hd, hd)?
            .add(&r.mul(&gh.narrow(1, 2 * hd, hd)?)?)?
            .tanh()?;
        Ok(z.affine(-1.0, 1.0)?.mul(h)?.add(&z.mul(&candidate)?)?)
    }
}
