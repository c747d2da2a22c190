//! The exponential cone K_exp = cl{(r, s, t) : s > 0, s·exp(r/s) ≤ t} (Parikh & Boyd 2014,
//! §6.3.4), the cone behind log-sum-exp, entropy and relative-entropy constraints.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{map_rows_f64, Projection};
use crate::{Error, Result};

/// The Euclidean projection of each consecutive triple (r, s, t) of a row onto K_exp (rows of
/// length 3k: a product of k cones).
///
/// Cases (Parikh & Boyd §6.3.4): v ∈ K_exp → v; v in the polar cone −K*_exp (r > 0 and
/// r·exp(s/r) ≤ −e·t, or r = 0, s ≤ 0, t ≤ 0) → 0; r < 0 and s < 0 → (r, 0, max(t, 0)).
/// Otherwise the projection lies on the boundary: on its smooth part s·w(ρ) with
/// w(ρ) = (ρ, 1, e^ρ), where ρ = r/s maximises ⟨v, w⟩/‖w‖, i.e. solves the univariate
///
/// N(ρ) = r(1 + e^{2ρ}(1 − ρ)) − s(ρ + e^{2ρ}) + t·e^ρ(ρ² − ρ + 1) = 0
///
/// (a grid bracket then bisection, robust where Newton alone is not), or on the piece
/// {(r, 0, t) : r ≤ 0, t ≥ 0}; the nearest candidate wins.
///
/// Backward: the Jacobian by implicit differentiation of the stationarity conditions
/// ⟨w, sw − v⟩ = 0, ⟨w′, sw − v⟩ = 0 in (s, ρ) on the smooth part; identity, zero or
/// diag(1[r<0], 0, 1[t>0]) in the other cases.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExpCone;

fn in_cone(r: f64, s: f64, t: f64) -> bool {
    (s > 0.0 && s * (r / s).exp() <= t) || (s == 0.0 && r <= 0.0 && t >= 0.0)
}

fn in_polar(r: f64, s: f64, t: f64) -> bool {
    (r > 0.0 && r * (s / r).exp() <= -std::f64::consts::E * t) || (r == 0.0 && s <= 0.0 && t <= 0.0)
}

fn stationarity(v: [f64; 3], rho: f64) -> f64 {
    let [r, s, t] = v;
    let (e, e2) = (rho.exp(), (2.0 * rho).exp());
    r * (1.0 + e2 * (1.0 - rho)) - s * (rho + e2) + t * e * (rho * rho - rho + 1.0)
}

fn dist2(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum()
}

/// The projection of one triple and its Jacobian (row-major 3×3).
fn project_triple(v: [f64; 3]) -> ([f64; 3], [f64; 9]) {
    let [r, s, t] = v;
    let identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    if in_cone(r, s, t) {
        return (v, identity);
    }
    if in_polar(r, s, t) {
        return ([0.0; 3], [0.0; 9]);
    }
    let piece = [r.min(0.0), 0.0, t.max(0.0)];
    let piece_jac = [
        f64::from(r < 0.0),
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        f64::from(t > 0.0),
    ];
    if r < 0.0 && s < 0.0 {
        return (piece, piece_jac);
    }
    let mut best = (dist2(piece, v), piece, piece_jac);
    if dist2([0.0; 3], v) < best.0 {
        best = (dist2([0.0; 3], v), [0.0; 3], [0.0; 9]);
    }
    // Bracket the roots of N on a grid, refine each by bisection, keep the nearest point.
    let (lo, hi, step) = (-40.0, 40.0, 0.25);
    let mut a = lo;
    let mut fa = stationarity(v, a);
    while a < hi {
        let b = a + step;
        let fb = stationarity(v, b);
        if fa == 0.0 || fa.signum() != fb.signum() {
            let (mut x0, mut x1, mut f0) = (a, b, fa);
            for _ in 0..80 {
                let mid = 0.5 * (x0 + x1);
                let fm = stationarity(v, mid);
                if fm == 0.0 {
                    (x0, x1) = (mid, mid);
                    break;
                }
                if fm.signum() == f0.signum() {
                    (x0, f0) = (mid, fm);
                } else {
                    x1 = mid;
                }
            }
            let rho = 0.5 * (x0 + x1);
            if let Some((p, jac)) = smooth_point(v, rho) {
                let d = dist2(p, v);
                if d < best.0 {
                    best = (d, p, jac);
                }
            }
        }
        (a, fa) = (b, fb);
    }
    (best.1, best.2)
}

/// The point s·w(ρ) of the smooth boundary nearest to v along the ray w(ρ), and the Jacobian of
/// the projection there; `None` when the ray points away from v.
fn smooth_point(v: [f64; 3], rho: f64) -> Option<([f64; 3], [f64; 9])> {
    let e = rho.exp();
    let w = [rho, 1.0, e];
    let w1 = [1.0, 0.0, e];
    let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    let vw = dot(v, w);
    if vw <= 0.0 {
        return None;
    }
    let ww = dot(w, w);
    let s = vw / ww;
    let p = [s * w[0], s * w[1], s * w[2]];
    let residual = [p[0] - v[0], p[1] - v[1], p[2] - v[2]];
    // ∂(F1, F2)/∂(s, ρ) with F1 = ⟨w, sw − v⟩, F2 = ⟨w′, sw − v⟩, w″ = (0, 0, e^ρ).
    let a11 = ww;
    let a12 = s * dot(w, w1);
    let a21 = dot(w1, w);
    let a22 = e * residual[2] + s * dot(w1, w1);
    let det = a11 * a22 - a12 * a21;
    if !(det.is_finite() && det.abs() > 1e-300) {
        return None;
    }
    // (ds/dv, dρ/dv) = A⁻¹ [wᵀ; w′ᵀ]; dp/dv = w ds/dv + s w′ dρ/dv.
    let mut jac = [0.0; 9];
    for k in 0..3 {
        let ds = (a22 * w[k] - a12 * w1[k]) / det;
        let drho = (-a21 * w[k] + a11 * w1[k]) / det;
        for i in 0..3 {
            jac[i * 3 + k] = w[i] * ds + s * w1[i] * drho;
        }
    }
    Some((p, jac))
}

fn check_width(y: &Tensor) -> Result<()> {
    let d = y.dims().last().copied().unwrap_or(0);
    if d == 0 || d % 3 != 0 {
        return Err(Error::invalid(format!(
            "exponential cone: rows must be triples (r, s, t), got rows of length {d}"
        )));
    }
    Ok(())
}

impl CustomOp1 for ExpCone {
    fn name(&self) -> &'static str {
        "exp-cone"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        map_rows_f64(storage, layout, "exp-cone", |row, out| {
            for v in row.chunks(3) {
                out.extend(project_triple([v[0], v[1], v[2]]).0);
            }
        })
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dims = arg.dims().to_vec();
        let values: Vec<f64> = arg
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let triples = values.len() / 3;
        let mut jac = Vec::with_capacity(9 * triples);
        for v in values.chunks(3) {
            jac.extend(project_triple([v[0], v[1], v[2]]).1);
        }
        let jac = Tensor::from_vec(jac, (triples, 3, 3), arg.device())?.to_dtype(grad.dtype())?;
        // ∂L/∂v = Jᵀ g per triple: (1×3 row gᵀ) · J.
        let g = grad.contiguous()?.reshape((triples, 1, 3))?;
        Ok(Some(g.matmul(&jac)?.reshape(dims)?))
    }
}

impl Projection for ExpCone {
    fn name(&self) -> &'static str {
        "exp-cone"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        check_width(y)?;
        Ok(y.contiguous()?.apply_op1(*self)?)
    }

    /// Per row, the largest distance of a triple from the cone measured by the violations of
    /// s ≥ 0 and t ≥ s·exp(r/s) (for s = 0: r ≤ 0 and t ≥ 0).
    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        check_width(y)?;
        let (n, d) = y.dims2()?;
        let values: Vec<f64> = y
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let out: Vec<f64> = values
            .chunks(d)
            .map(|row| {
                row.chunks(3).fold(0.0f64, |m, v| {
                    let [r, s, t] = [v[0], v[1], v[2]];
                    let gap = if s > 1e-12 {
                        (s * (r / s).exp() - t).max(0.0)
                    } else {
                        (-s).max(0.0) + r.max(0.0) + (-t).max(0.0)
                    };
                    m.max(gap)
                })
            })
            .collect();
        Ok(Tensor::from_vec(out, n, y.device())?.to_dtype(y.dtype())?)
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn nonexpansive(&self) -> bool {
        true
    }
}
