//! c-convex functions on the sphere S² (tutorial §7, eq. 82–85).
//!
//! f(y; x) = min_γ { ½ d(y, z_i)² + α_i }_{i=1..m}, with d(y, z) = arccos(yᵀz) the Riemannian
//! distance and min_γ(a) = −γ log Σ_i exp(−a_i/γ) the soft minimum (γ = 0: the hard minimum).
//! The context is x = (z_1, …, z_m, α_1, …, α_m) ∈ R^{4m}, laid out as the m centres (3 numbers
//! each) followed by the m offsets. Solutions live on S², reached from R³ by π(y) = y/‖y‖
//! (eq. 84), so the model is trained on f ∘ π (eq. 83).

use candle_core::{DType, Device, Tensor, D};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, Normal, StandardNormal};
use serde::{Deserialize, Serialize};

use super::{CpuObjective, Problem};
use crate::ops::{acos_margin, safe_acos};
use crate::projection::{Projection, SoftmaxSimplex, UnitSphere};
use crate::{Error, Result};

/// The largest number of components (keeps the per-instance solver allocation-free).
pub const MAX_COMPONENTS: usize = 64;

/// How the offsets α_i are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AlphaDistribution {
    /// α_i = scale · U(0, 1): the tutorial's reference code (scale 0.7).
    Uniform {
        /// Upper end of the uniform distribution.
        scale: f64,
    },
    /// α_i ~ N(0, β) with variance β: the text of §7.
    Normal {
        /// The variance β.
        variance: f64,
    },
}

impl Default for AlphaDistribution {
    fn default() -> Self {
        AlphaDistribution::Uniform { scale: 0.7 }
    }
}

/// Settings of the [`Sphere`] family; every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SphereConfig {
    /// Number of components m (default 4, so the context has 16 numbers).
    pub components: usize,
    /// Soft-min temperature γ ≥ 0 (default 0.5; 0 gives the hard minimum).
    pub gamma: f64,
    /// Distribution of the offsets α_i (default 0.7·U(0, 1)).
    pub alpha: AlphaDistribution,
    /// Points of the Fibonacci grid searched by the exact solver (default 4096).
    pub grid_points: usize,
}

impl Default for SphereConfig {
    fn default() -> Self {
        SphereConfig {
            components: 4,
            gamma: 0.5,
            alpha: AlphaDistribution::default(),
            grid_points: 4096,
        }
    }
}

/// The sphere family of §7. See the module documentation for the formula.
#[derive(Debug, Clone)]
pub struct Sphere {
    config: SphereConfig,
    grid: Vec<[f64; 3]>,
}

impl Sphere {
    /// Validates the configuration and builds the exact solver's grid.
    pub fn new(config: SphereConfig) -> Result<Self> {
        if config.components == 0 || config.components > MAX_COMPONENTS {
            return Err(Error::invalid(format!(
                "sphere: components must be between 1 and {MAX_COMPONENTS}, got {}",
                config.components
            )));
        }
        if !(config.gamma >= 0.0 && config.gamma.is_finite()) {
            return Err(Error::invalid(format!(
                "sphere: gamma must be finite and >= 0, got {}",
                config.gamma
            )));
        }
        match config.alpha {
            AlphaDistribution::Uniform { scale } if !(scale.is_finite() && scale >= 0.0) => {
                return Err(Error::invalid(
                    "sphere: alpha scale must be finite and >= 0",
                ))
            }
            AlphaDistribution::Normal { variance }
                if !(variance.is_finite() && variance >= 0.0) =>
            {
                return Err(Error::invalid(
                    "sphere: alpha variance must be finite and >= 0",
                ))
            }
            _ => {}
        }
        if config.grid_points < 16 {
            return Err(Error::invalid("sphere: grid_points must be at least 16"));
        }
        let grid = fibonacci_sphere(config.grid_points);
        Ok(Sphere { config, grid })
    }

    /// The configuration.
    pub fn config(&self) -> &SphereConfig {
        &self.config
    }

    /// f(y; x) and its Euclidean gradient ∇_y f for one instance, in f64 (used by the exact
    /// solver and the fused training path). `y` need not be normalised.
    pub fn point_value_and_grad(&self, y: [f64; 3], x: &[f64]) -> (f64, [f64; 3]) {
        let m = self.config.components;
        let gamma = self.config.gamma;
        let eps = acos_margin(DType::F64);
        let mut a = [0f64; MAX_COMPONENTS];
        let mut da_dc = [0f64; MAX_COMPONENTS];
        for i in 0..m {
            let z = &x[3 * i..3 * i + 3];
            let c = y[0] * z[0] + y[1] * z[1] + y[2] * z[2];
            let inside = c > -1.0 + eps && c < 1.0 - eps;
            let cc = c.clamp(-1.0 + eps, 1.0 - eps);
            let d = cc.acos();
            a[i] = 0.5 * d * d + x[3 * m + i];
            da_dc[i] = if inside {
                -d / (1.0 - cc * cc).sqrt()
            } else {
                0.0
            };
        }
        let (value, weights) = soft_min_with_weights(&a[..m], gamma);
        let mut g = [0f64; 3];
        for i in 0..m {
            let coef = weights(i) * da_dc[i];
            for k in 0..3 {
                g[k] += coef * x[3 * i + k];
            }
        }
        (value, g)
    }

    /// Riemannian gradient descent from `y0` on S² with a step that halves whenever f does not
    /// decrease; returns the final point and value.
    fn refine(&self, y0: [f64; 3], x: &[f64]) -> ([f64; 3], f64) {
        let mut y = normalize(y0);
        let (mut f, mut g) = self.point_value_and_grad(y, x);
        let mut step = 0.5;
        for _ in 0..500 {
            let t = tangent(y, g);
            let tn = (t[0] * t[0] + t[1] * t[1] + t[2] * t[2]).sqrt();
            if tn < 1e-10 || step < 1e-12 {
                break;
            }
            let cand = normalize([y[0] - step * t[0], y[1] - step * t[1], y[2] - step * t[2]]);
            let (fc, gc) = self.point_value_and_grad(cand, x);
            if fc <= f {
                y = cand;
                f = fc;
                g = gc;
                step = (step * 1.5).min(1.0);
            } else {
                step *= 0.5;
            }
        }
        (y, f)
    }

    /// Global search for one instance: the best point of the Fibonacci grid and the m centres,
    /// each refined by Riemannian gradient descent; the best refined point wins.
    pub fn solve_one(&self, x: &[f64]) -> [f64; 3] {
        let m = self.config.components;
        let mut best_grid = self.grid[0];
        let mut best_val = f64::INFINITY;
        for p in &self.grid {
            let v = self.point_value_and_grad(*p, x).0;
            if v < best_val {
                best_val = v;
                best_grid = *p;
            }
        }
        let mut best = self.refine(best_grid, x);
        for i in 0..m {
            let cand = self.refine([x[3 * i], x[3 * i + 1], x[3 * i + 2]], x);
            if cand.1 < best.1 {
                best = cand;
            }
        }
        best.0
    }
}

/// min_γ(a) = −γ log Σ exp(−a_i/γ) and a function giving its weights ∂min_γ/∂a_i (the softmax
/// of −a/γ; for γ = 0 the indicator of the first minimum).
fn soft_min_with_weights(a: &[f64], gamma: f64) -> (f64, impl Fn(usize) -> f64 + '_) {
    let amin = a.iter().copied().fold(f64::INFINITY, f64::min);
    let argmin = a.iter().position(|&v| v == amin).unwrap_or(0);
    let (value, norm) = if gamma > 0.0 {
        let s: f64 = a.iter().map(|&ai| (-(ai - amin) / gamma).exp()).sum();
        (amin - gamma * s.ln(), s)
    } else {
        (amin, 1.0)
    };
    let weight = move |i: usize| {
        if gamma > 0.0 {
            (-(a[i] - amin) / gamma).exp() / norm
        } else if i == argmin {
            1.0
        } else {
            0.0
        }
    };
    (value, weight)
}

fn normalize(y: [f64; 3]) -> [f64; 3] {
    let n = (y[0] * y[0] + y[1] * y[1] + y[2] * y[2]).sqrt().max(1e-300);
    [y[0] / n, y[1] / n, y[2] / n]
}

/// The component of g tangent to S² at the unit vector y: (I − yyᵀ) g.
fn tangent(y: [f64; 3], g: [f64; 3]) -> [f64; 3] {
    let d = y[0] * g[0] + y[1] * g[1] + y[2] * g[2];
    [g[0] - d * y[0], g[1] - d * y[1], g[2] - d * y[2]]
}

/// N nearly uniform points on S² (the Fibonacci lattice).
pub fn fibonacci_sphere(n: usize) -> Vec<[f64; 3]> {
    let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
    (0..n)
        .map(|i| {
            let z = 1.0 - 2.0 * (i as f64 + 0.5) / n as f64;
            let r = (1.0 - z * z).sqrt();
            let phi = golden * i as f64;
            [r * phi.cos(), r * phi.sin(), z]
        })
        .collect()
}

/// The soft minimum over the last axis of a `(n, m)` tensor: −γ log Σ exp(−a/γ), or the hard
/// minimum when γ = 0. Numerically stable (the shift by the minimum is detached, which leaves
/// the value and its gradient unchanged).
pub fn soft_min(a: &Tensor, gamma: f64) -> Result<Tensor> {
    if gamma == 0.0 {
        return Ok(a.min(D::Minus1)?);
    }
    let b = a.affine(-1.0 / gamma, 0.0)?;
    let shift = b.max_keepdim(D::Minus1)?.detach();
    let lse = b
        .broadcast_sub(&shift)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .add(&shift)?;
    Ok(lse.squeeze(D::Minus1)?.affine(-gamma, 0.0)?)
}

impl Sphere {
    /// (z, α, c) for a batch: centres `(n, m, 3)`, offsets `(n, m)`, cosines yᵀz_i `(n, m)`.
    fn parts(&self, y: &Tensor, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let n = x.dim(0)?;
        let m = self.config.components;
        let z = x.narrow(1, 0, 3 * m)?.reshape((n, m, 3))?;
        let alpha = x.narrow(1, 3 * m, m)?;
        let c = z.broadcast_mul(&y.unsqueeze(1)?)?.sum(2)?;
        Ok((z, alpha, c))
    }
}

impl Problem for Sphere {
    fn name(&self) -> &str {
        "sphere"
    }

    fn context_dim(&self) -> usize {
        4 * self.config.components
    }

    fn solution_dim(&self) -> usize {
        3
    }

    fn sample_contexts(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        let m = self.config.components;
        let mut data = Vec::with_capacity(n * 4 * m);
        let normal = Normal::new(0.0, 1.0).expect("unit normal");
        for _ in 0..n {
            for _ in 0..m {
                let v: [f64; 3] = [
                    rng.sample(StandardNormal),
                    rng.sample(StandardNormal),
                    rng.sample(StandardNormal),
                ];
                data.extend_from_slice(&normalize(v));
            }
            for _ in 0..m {
                data.push(match self.config.alpha {
                    AlphaDistribution::Uniform { scale } => scale * rng.random::<f64>(),
                    AlphaDistribution::Normal { variance } => variance.sqrt() * normal.sample(rng),
                });
            }
        }
        Ok(Tensor::from_vec(data, (n, 4 * m), device)?.to_dtype(DType::F32)?)
    }

    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (_, alpha, c) = self.parts(y, x)?;
        let d = safe_acos(&c)?;
        let a = (d.sqr()? * 0.5)?.add(&alpha)?;
        soft_min(&a, self.config.gamma)
    }

    /// Closed form: ∇_y f = Σ_i w_i · d_i · (−1/√(1 − c_i²)) · z_i with w = ∂min_γ/∂a.
    fn gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (z, alpha, c) = self.parts(y, x)?;
        let eps = acos_margin(c.dtype());
        let cc = c.clamp(-1.0 + eps, 1.0 - eps)?;
        let d = safe_acos(&c)?;
        let a = (d.sqr()? * 0.5)?.add(&alpha)?;
        let w = if self.config.gamma > 0.0 {
            // Not candle_nn's softmax_last_dim: it has no backward, and this gradient must stay
            // differentiable for unrolled (semi-amortized) steps.
            SoftmaxSimplex.project(&a.affine(-1.0 / self.config.gamma, 0.0)?)?
        } else {
            a.broadcast_eq(&a.min_keepdim(D::Minus1)?)?
                .to_dtype(a.dtype())?
        };
        let dd = d.div(&cc.sqr()?.affine(-1.0, 1.0)?.sqrt()?)?.neg()?;
        let coef = w.mul(&dd)?.unsqueeze(2)?;
        Ok(z.broadcast_mul(&coef)?.sum(1)?)
    }

    /// Closed form: ∇_y f(y/‖y‖) = (I − ŷŷᵀ) ∇f(ŷ) / ‖y‖ with ŷ = y/‖y‖.
    fn domain_gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let norm = y
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::INFINITY)?;
        let u = y.broadcast_div(&norm)?;
        let g = self.gradient(&u, x)?;
        let radial = g.mul(&u)?.sum_keepdim(1)?;
        Ok(g.sub(&u.broadcast_mul(&radial)?)?.broadcast_div(&norm)?)
    }

    fn to_domain(&self, y: &Tensor) -> Result<Tensor> {
        UnitSphere.project(y)
    }

    fn cpu_objective(&self) -> Option<&dyn CpuObjective> {
        Some(self)
    }

    fn solve_exact(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.check_contexts(x)?;
        let n = x.dim(0)?;
        let rows: Vec<Vec<f64>> = x.to_dtype(DType::F64)?.to_vec2()?;
        let mut out = Vec::with_capacity(3 * n);
        for row in &rows {
            out.extend_from_slice(&self.solve_one(row));
        }
        Ok(Some(
            Tensor::from_vec(out, (n, 3), x.device())?.to_dtype(x.dtype())?,
        ))
    }
}

/// Rows evaluated together by the CPU objective: every per-component quantity is computed for
/// `LANES` rows at once in plain loops over fixed arrays, which the compiler turns into SIMD
/// (libm's scalar `acosf`/`expf` calls would not vectorize, so polynomial forms are used).
const LANES: usize = 16;

/// arccos on [−1, 1] to about 2e-8 absolute error (Abramowitz & Stegun 4.4.46):
/// arccos|c| ≈ √(1 − |c|) · p(|c|), and arccos(c) = π − arccos(−c) for c < 0.
#[inline(always)]
fn acos_poly(c: f32) -> f32 {
    let x = c.abs();
    // Published coefficients a0 … a7 (f64 literals, rounded once to f32).
    const A: [f32; 8] = [
        1.570_796_305_0_f64 as f32,
        -0.214_598_801_6_f64 as f32,
        0.088_978_987_4_f64 as f32,
        -0.050_174_304_6_f64 as f32,
        0.030_891_881_0_f64 as f32,
        -0.017_088_125_6_f64 as f32,
        0.006_670_090_1_f64 as f32,
        -0.001_262_491_1_f64 as f32,
    ];
    let mut p = A[7];
    for k in (0..7).rev() {
        p = p * x + A[k];
    }
    let r = (1.0 - x).max(0.0).sqrt() * p;
    if c < 0.0 {
        std::f32::consts::PI - r
    } else {
        r
    }
}

/// eᵗ for t ≤ 0 (soft-min weights), to about 1e-6 relative error: t = k ln 2 + r with
/// |r| ≤ ln2/2, a degree-6 polynomial for eʳ, and 2ᵏ from the exponent bits; t is clamped at
/// −87 (e⁻⁸⁷ ≈ 1.6e−38, the smallest normal f32 scale).
#[inline(always)]
fn exp_poly(t: f32) -> f32 {
    let t = t.max(-87.0);
    let k = (t * std::f32::consts::LOG2_E).round();
    // Cody–Waite: ln 2 split in two so that k·ln2 is exact enough for large |k|.
    let r = (t - k * 0.693_145_75) - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    let scale = f32::from_bits((((k as i32) + 127).max(0) as u32) << 23);
    p * scale
}

impl CpuObjective for Sphere {
    /// f(u; x) with u = raw/‖raw‖ per row, in f32, and ∇_raw = (I − uuᵀ) ∇f(u) / ‖raw‖
    /// (the same formulas as [`Sphere::point_value_and_grad`]).
    fn value_and_grad(&self, raw: &[f32], x: &[f32], n: usize, grad: &mut [f32]) -> f64 {
        let m = self.config.components;
        let cdim = 4 * m;
        let gamma = self.config.gamma as f32;
        let eps = acos_margin(DType::F32) as f32;
        let (lo, hi) = (-1.0 + eps, 1.0 - eps);
        let mut total = 0.0f64;
        let mut start = 0;
        while start < n {
            let len = LANES.min(n - start);
            // Structure of arrays for LANES rows: u, ‖raw‖, and per component a_i, ∂a_i/∂c.
            let mut u = [[0f32; LANES]; 3];
            let mut norm = [1f32; LANES];
            for l in 0..len {
                let r = &raw[3 * (start + l)..3 * (start + l) + 3];
                norm[l] = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt().max(1e-12);
                for k in 0..3 {
                    u[k][l] = r[k] / norm[l];
                }
            }
            let mut a = [[0f32; LANES]; MAX_COMPONENTS];
            let mut da = [[0f32; LANES]; MAX_COMPONENTS];
            let mut amin = [f32::INFINITY; LANES];
            for i in 0..m {
                let mut c = [0f32; LANES];
                let mut alpha = [0f32; LANES];
                for l in 0..len {
                    let ctx = &x[cdim * (start + l)..cdim * (start + l + 1)];
                    let z = &ctx[3 * i..3 * i + 3];
                    c[l] = u[0][l] * z[0] + u[1][l] * z[1] + u[2][l] * z[2];
                    alpha[l] = ctx[3 * m + i];
                }
                for l in 0..LANES {
                    let cc = c[l].clamp(lo, hi);
                    let d = acos_poly(cc);
                    a[i][l] = 0.5 * d * d + alpha[l];
                    let inside = c[l] > lo && c[l] < hi;
                    da[i][l] = if inside {
                        -d / (1.0 - cc * cc).sqrt()
                    } else {
                        0.0
                    };
                    amin[l] = amin[l].min(a[i][l]);
                }
            }
            // Soft-min value and weights w_i (γ = 0: the first minimiser), folded into da.
            let mut value = amin;
            if gamma > 0.0 {
                let mut sum = [0f32; LANES];
                for ai in a.iter_mut().take(m) {
                    for l in 0..LANES {
                        ai[l] = exp_poly(-(ai[l] - amin[l]) / gamma);
                        sum[l] += ai[l];
                    }
                }
                for (ai, di) in a.iter().zip(da.iter_mut()).take(m) {
                    for l in 0..LANES {
                        di[l] *= ai[l] / sum[l];
                    }
                }
                for l in 0..len {
                    value[l] = amin[l] - gamma * sum[l].ln();
                }
            } else {
                for l in 0..len {
                    let k = (0..m).position(|i| a[i][l] == amin[l]).unwrap_or(0);
                    for (i, di) in da.iter_mut().enumerate().take(m) {
                        if i != k {
                            di[l] = 0.0;
                        }
                    }
                }
            }
            for l in 0..len {
                let ctx = &x[cdim * (start + l)..cdim * (start + l + 1)];
                let mut g = [0f32; 3];
                for i in 0..m {
                    for k in 0..3 {
                        g[k] += da[i][l] * ctx[3 * i + k];
                    }
                }
                let radial = u[0][l] * g[0] + u[1][l] * g[1] + u[2][l] * g[2];
                let out = &mut grad[3 * (start + l)..3 * (start + l) + 3];
                for k in 0..3 {
                    out[k] = (g[k] - radial * u[k][l]) / norm[l];
                }
                total += value[l] as f64;
            }
            start += len;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_acos_and_exp_match_libm() {
        for i in 0..=2000 {
            let c = -1.0 + i as f32 / 1000.0;
            assert!((acos_poly(c) - c.acos()).abs() < 1e-6, "acos({c})");
        }
        for i in 0..=1000 {
            let t = -(i as f32) / 20.0;
            let (got, want) = (exp_poly(t), t.exp());
            assert!(
                (got - want).abs() <= 2e-6 * want + 1e-30,
                "exp({t}): {got} vs {want}"
            );
        }
        assert!(exp_poly(-200.0) < 1e-37);
    }

    #[test]
    fn cpu_objective_matches_the_f64_point_formula() {
        let s = Sphere::new(SphereConfig::default()).unwrap();
        let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(0);
        let n = 37;
        let x: Vec<f32> = s
            .sample_contexts(n, &mut rng, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let raw: Vec<f32> = (0..3 * n)
            .map(|i| ((i * 7919 % 13) as f32 - 6.0) / 3.0 + 0.01)
            .collect();
        let mut g = vec![0f32; 3 * n];
        let total = CpuObjective::value_and_grad(&s, &raw, &x, n, &mut g);
        let mut want_total = 0.0;
        for r in 0..n {
            let y: Vec<f64> = raw[3 * r..3 * r + 3].iter().map(|&v| v as f64).collect();
            let norm = (y[0] * y[0] + y[1] * y[1] + y[2] * y[2]).sqrt();
            let u = [y[0] / norm, y[1] / norm, y[2] / norm];
            let ctx: Vec<f64> = x[16 * r..16 * r + 16].iter().map(|&v| v as f64).collect();
            let (f, gf) = s.point_value_and_grad(u, &ctx);
            want_total += f;
            let t = tangent(u, gf);
            for k in 0..3 {
                assert!((g[3 * r + k] as f64 - t[k] / norm).abs() < 1e-4, "row {r}");
            }
        }
        assert!((total - want_total).abs() < 1e-4 * n as f64);
    }
}
