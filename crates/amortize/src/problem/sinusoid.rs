//! Few-shot sinusoid regression (Finn et al. 2017; tutorial §6.3): the meta-learning proving
//! ground of semi-amortized models.
//!
//! A task is y = A sin(t − b) with amplitude A ~ U[0.1, 5] and phase b ~ U[0, π], observed at
//! K support points and Q query points t ~ U[−5, 5]. The domain Y is the flattened parameters
//! φ of a learner MLP 1-H₁-H₂-1 (ReLU; 1,761 numbers for the default 40-40), the context x is
//! the task's data [t_s, y_s, t_q, y_q] (2K + 2Q numbers), and f(φ; x) is the learner's mean
//! squared error on the K support points: what the inner steps of MAML descend. The query
//! points give [`Problem::query_objective`], the meta-loss (the error after adaptation on data
//! the adaptation did not see).

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Problem;
use crate::{Error, Result};

/// Settings of the [`Sinusoid`] family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinusoidConfig {
    /// Support points K per task (default 10).
    pub shots: usize,
    /// Query points Q per task (default 10).
    pub queries: usize,
    /// The learner's hidden widths (default [40, 40]).
    pub hidden: Vec<usize>,
    /// Amplitude range (default [0.1, 5]).
    pub amplitude: [f64; 2],
    /// Phase range (default [0, π]).
    pub phase: [f64; 2],
    /// Inputs t ~ U[−range, range] (default 5).
    pub range: f64,
}

impl Default for SinusoidConfig {
    fn default() -> Self {
        SinusoidConfig {
            shots: 10,
            queries: 10,
            hidden: vec![40, 40],
            amplitude: [0.1, 5.0],
            phase: [0.0, std::f64::consts::PI],
            range: 5.0,
        }
    }
}

/// The sinusoid family; see the module documentation.
#[derive(Debug, Clone)]
pub struct Sinusoid {
    config: SinusoidConfig,
    /// Layer widths, input to output: [1, H₁, …, 1].
    widths: Vec<usize>,
}

impl Sinusoid {
    /// Validates the configuration.
    pub fn new(config: SinusoidConfig) -> Result<Self> {
        let ok_range = |r: [f64; 2]| r[0].is_finite() && r[1].is_finite() && r[0] <= r[1];
        if config.shots == 0
            || config.queries == 0
            || config.hidden.contains(&0)
            || !ok_range(config.amplitude)
            || !ok_range(config.phase)
            || !(config.range.is_finite() && config.range > 0.0)
        {
            return Err(Error::invalid(
                "sinusoid: need shots, queries and hidden widths >= 1, ordered finite amplitude and phase ranges, range > 0",
            ));
        }
        let mut widths = vec![1];
        widths.extend(&config.hidden);
        widths.push(1);
        Ok(Sinusoid { config, widths })
    }

    /// The settings.
    pub fn config(&self) -> &SinusoidConfig {
        &self.config
    }

    /// The learner's output for each task's parameters φ `(n, solution_dim)` at inputs
    /// t `(n, points)`: `(n, points)`. Batched over tasks with 3-D matrix products.
    pub fn learner(&self, phi: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (out, _, _) = self.learner_layers(phi, t)?;
        Ok(out.reshape(t.dims2()?)?)
    }

    /// The learner's forward pass: its output `(n, points, 1)`, and for each layer its input
    /// `(n, points, width)` and weight matrix `(n, width, next width)`, as backpropagation
    /// needs them.
    fn learner_layers(
        &self,
        phi: &Tensor,
        t: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>, Vec<Tensor>)> {
        let (n, points) = t.dims2()?;
        let layers = self.widths.len() - 1;
        let mut inputs = Vec::with_capacity(layers);
        let mut weights = Vec::with_capacity(layers);
        let mut h = t.reshape((n, points, 1))?;
        let mut offset = 0;
        for (l, pair) in self.widths.windows(2).enumerate() {
            let (a, b) = (pair[0], pair[1]);
            let w = phi.narrow(1, offset, a * b)?.reshape((n, a, b))?;
            offset += a * b;
            let bias = phi.narrow(1, offset, b)?.reshape((n, 1, b))?;
            offset += b;
            let pre = h.matmul(&w)?.broadcast_add(&bias)?;
            inputs.push(h);
            weights.push(w);
            h = if l + 1 < layers { pre.relu()? } else { pre };
        }
        Ok((h, inputs, weights))
    }

    /// ∇_φ of the mean squared error of the learner on inputs t `(n, points)` with targets y,
    /// per task, by hand-written backpropagation in tensor ops. It stays differentiable (the
    /// ReLU masks are constants), so unrolled steps build one graph that a single backward pass
    /// traverses, where an autodiff gradient per step would re-traverse every earlier step.
    fn mse_gradient(&self, phi: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        let (n, points) = t.dims2()?;
        let (out, inputs, weights) = self.learner_layers(phi, t)?;
        let layers = inputs.len();
        // Backward: d(mean (out − y)²)/d out = 2(out − y)/points.
        let mut delta = out
            .sub(&y.reshape((n, points, 1))?)?
            .affine(2.0 / points as f64, 0.0)?;
        let mut grads = Vec::with_capacity(layers);
        for l in (0..layers).rev() {
            let dw = inputs[l].transpose(1, 2)?.matmul(&delta)?;
            let db = delta.sum_keepdim(1)?;
            grads.push((dw.flatten_from(1)?, db.flatten_from(1)?));
            if l > 0 {
                // Layer l's input is relu(pre-activation of layer l − 1): the ReLU derivative
                // is 1 exactly where that input is positive.
                let mask = inputs[l].detach().gt(0.0)?.to_dtype(delta.dtype())?;
                delta = delta.matmul(&weights[l].transpose(1, 2)?)?.mul(&mask)?;
            }
        }
        let mut parts = Vec::with_capacity(2 * layers);
        for (dw, db) in grads.into_iter().rev() {
            parts.push(dw);
            parts.push(db);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Splits contexts into (t_s, y_s, t_q, y_q).
    fn parts(&self, x: &Tensor) -> Result<[Tensor; 4]> {
        let (k, q) = (self.config.shots, self.config.queries);
        Ok([
            x.narrow(1, 0, k)?,
            x.narrow(1, k, k)?,
            x.narrow(1, 2 * k, q)?,
            x.narrow(1, 2 * k + q, q)?,
        ])
    }

    /// Mean squared error of the learner φ on inputs t with targets y, per task.
    fn mse(&self, phi: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        Ok(self.learner(phi, t)?.sub(y)?.sqr()?.mean(1)?)
    }

    /// `n` tasks with `points` query points each on a grid over [−range, range], for figures:
    /// (contexts, grid inputs, true values), the contexts' query part left as drawn.
    pub fn sample_tasks_with_curves(
        &self,
        n: usize,
        points: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (x, params) = self.draw(n, rng, device)?;
        let r = self.config.range;
        let grid: Vec<f64> = (0..points)
            .map(|i| -r + 2.0 * r * i as f64 / (points.max(2) - 1) as f64)
            .collect();
        let mut ts = Vec::with_capacity(n * points);
        let mut ys = Vec::with_capacity(n * points);
        for (a, b) in params {
            for &t in &grid {
                ts.push(t as f32);
                ys.push((a * (t - b).sin()) as f32);
            }
        }
        Ok((
            x,
            Tensor::from_vec(ts, (n, points), device)?,
            Tensor::from_vec(ys, (n, points), device)?,
        ))
    }

    /// `n` tasks and their (amplitude, phase).
    fn draw(
        &self,
        n: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<(Tensor, Vec<(f64, f64)>)> {
        let (k, q) = (self.config.shots, self.config.queries);
        let c = &self.config;
        let mut data = Vec::with_capacity(n * (2 * k + 2 * q));
        let mut params = Vec::with_capacity(n);
        for _ in 0..n {
            let a = rng.random_range(c.amplitude[0]..=c.amplitude[1]);
            let b = rng.random_range(c.phase[0]..=c.phase[1]);
            let ts: Vec<f64> = (0..k + q)
                .map(|_| rng.random_range(-c.range..=c.range))
                .collect();
            let ys: Vec<f64> = ts.iter().map(|t| a * (t - b).sin()).collect();
            data.extend(ts[..k].iter().map(|&v| v as f32));
            data.extend(ys[..k].iter().map(|&v| v as f32));
            data.extend(ts[k..].iter().map(|&v| v as f32));
            data.extend(ys[k..].iter().map(|&v| v as f32));
            params.push((a, b));
        }
        Ok((Tensor::from_vec(data, (n, 2 * k + 2 * q), device)?, params))
    }
}

impl Problem for Sinusoid {
    fn name(&self) -> &str {
        "sinusoid"
    }

    fn context_dim(&self) -> usize {
        2 * self.config.shots + 2 * self.config.queries
    }

    fn solution_dim(&self) -> usize {
        self.widths.windows(2).map(|p| p[0] * p[1] + p[1]).sum()
    }

    fn sample_contexts(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        Ok(self.draw(n, rng, device)?.0)
    }

    /// The support-set MSE (the inner objective).
    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(y.dtype())?;
        let [ts, ys, _, _] = self.parts(&x)?;
        self.mse(y, &ts, &ys)
    }

    /// Closed form by backpropagation through the learner (see `mse_gradient`).
    fn gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(y.dtype())?;
        let [ts, ys, _, _] = self.parts(&x)?;
        self.mse_gradient(y, &ts, &ys)
    }

    fn domain_gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.gradient(y, x)
    }

    fn query_objective(&self, y: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
        let x = x.to_dtype(y.dtype())?;
        let [_, _, tq, yq] = self.parts(&x)?;
        Ok(Some(self.mse(y, &tq, &yq)?))
    }

    fn support_set(&self, x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let [ts, ys, _, _] = self.parts(x)?;
        let (n, k) = ts.dims2()?;
        Ok(Some((ts.reshape((n, k, 1))?, ys.reshape((n, k, 1))?)))
    }

    /// A freshly initialised learner: weights U(−1/√fan_in, 1/√fan_in) as in PyTorch's
    /// `nn.Linear`, biases likewise.
    fn default_solution(&self, rng: &mut StdRng, device: &Device) -> Result<Option<Tensor>> {
        let mut phi = Vec::with_capacity(self.solution_dim());
        for pair in self.widths.windows(2) {
            let bound = 1.0 / (pair[0] as f64).sqrt();
            for _ in 0..pair[0] * pair[1] + pair[1] {
                phi.push(rng.random_range(-bound..bound) as f32);
            }
        }
        let n = phi.len();
        Ok(Some(
            Tensor::from_vec(phi, (1, n), device)?.to_dtype(DType::F32)?,
        ))
    }
}
