//! The cone of symmetric positive semidefinite k×k matrices, by eigenvalue clipping.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::{map_rows_f64, Projection};
use crate::{Error, Result};

/// The Euclidean (Frobenius) projection onto the PSD cone of k×k matrices, rows holding k²
/// numbers row-major: with A = (Y + Yᵀ)/2 = V diag(λ) Vᵀ, π(Y) = V diag(max(λ, 0)) Vᵀ.
///
/// Backward (Daleckii–Krein): for an output gradient G, with Ḡ = (G + Gᵀ)/2,
/// ∂L/∂Y = V (Γ ∘ (Vᵀ Ḡ V)) Vᵀ, Γ_ij = (f(λ_i) − f(λ_j))/(λ_i − λ_j) (f′(λ_i) when the
/// eigenvalues coincide), f = max(·, 0). It is linear in G through tensor ops; V and Γ are
/// recomputed from the input as constants.
#[derive(Debug, Clone, Copy)]
pub struct PsdCone {
    k: usize,
}

impl PsdCone {
    /// The cone of k×k matrices (k ≥ 1).
    pub fn new(k: usize) -> Result<Self> {
        if k == 0 {
            return Err(Error::invalid("psd cone: k must be at least 1"));
        }
        Ok(PsdCone { k })
    }

    fn check(&self, y: &Tensor) -> Result<usize> {
        let (n, d) = y.dims2()?;
        if d != self.k * self.k {
            return Err(Error::invalid(format!(
                "psd cone: rows must hold k² = {} numbers, got {d}",
                self.k * self.k
            )));
        }
        Ok(n)
    }
}

/// Eigen-decomposition of a symmetric k×k matrix (row-major) by cyclic Jacobi rotations:
/// returns the eigenvalues and V (row-major, eigenvectors in columns).
pub fn symmetric_eigen(a: &[f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    let mut v = vec![0.0; k * k];
    for i in 0..k {
        v[i * k + i] = 1.0;
    }
    let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..100 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * k + j] * m[i * k + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = m[p * k + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * k + q] - m[p * k + p]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..k {
                    let (mrp, mrq) = (m[r * k + p], m[r * k + q]);
                    m[r * k + p] = c * mrp - s * mrq;
                    m[r * k + q] = s * mrp + c * mrq;
                }
                for r in 0..k {
                    let (mpr, mqr) = (m[p * k + r], m[q * k + r]);
                    m[p * k + r] = c * mpr - s * mqr;
                    m[q * k + r] = s * mpr + c * mqr;
                }
                for r in 0..k {
                    let (vrp, vrq) = (v[r * k + p], v[r * k + q]);
                    v[r * k + p] = c * vrp - s * vrq;
                    v[r * k + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    ((0..k).map(|i| m[i * k + i]).collect(), v)
}

fn symmetrize(row: &[f64], k: usize) -> Vec<f64> {
    let mut a = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..k {
            a[i * k + j] = 0.5 * (row[i * k + j] + row[j * k + i]);
        }
    }
    a
}

impl CustomOp1 for PsdCone {
    fn name(&self) -> &'static str {
        "psd-cone"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = self.k;
        map_rows_f64(storage, layout, "psd-cone", |row, out| {
            let (lam, v) = symmetric_eigen(&symmetrize(row, k), k);
            for i in 0..k {
                for j in 0..k {
                    out.push(
                        (0..k)
                            .map(|l| v[i * k + l] * lam[l].max(0.0) * v[j * k + l])
                            .sum(),
                    );
                }
            }
        })
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let k = self.k;
        let n = arg.dim(0)?;
        let data: Vec<f64> = arg.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let (mut vs, mut gammas) = (Vec::with_capacity(n * k * k), Vec::with_capacity(n * k * k));
        for row in data.chunks(k * k) {
            let (lam, v) = symmetric_eigen(&symmetrize(row, k), k);
            let tol = 1e-12 * lam.iter().fold(1.0f64, |a, l| a.max(l.abs()));
            for i in 0..k {
                for j in 0..k {
                    let (li, lj) = (lam[i], lam[j]);
                    gammas.push(if (li - lj).abs() > tol {
                        (li.max(0.0) - lj.max(0.0)) / (li - lj)
                    } else if li > 0.0 {
                        1.0
                    } else {
                        0.0
                    });
                }
            }
            vs.extend(v);
        }
        let dev = arg.device();
        let v = Tensor::from_vec(vs, (n, k, k), dev)?.to_dtype(grad.dtype())?;
        let gamma = Tensor::from_vec(gammas, (n, k, k), dev)?.to_dtype(grad.dtype())?;
        let g = grad.reshape((n, k, k))?;
        let g = (g.clone() + g.transpose(1, 2)?)?.affine(0.5, 0.0)?;
        let vt = v.transpose(1, 2)?.contiguous()?;
        let inner = vt.matmul(&g.contiguous()?)?.matmul(&v)?.mul(&gamma)?;
        let out = v.matmul(&inner)?.matmul(&vt)?;
        Ok(Some(out.reshape((n, k * k))?))
    }
}

impl Projection for PsdCone {
    fn name(&self) -> &'static str {
        "psd-cone"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        self.check(y)?;
        Ok(y.contiguous()?.apply_op1(*self)?)
    }

    /// max(asymmetry, −λ_min(sym(y))) per row.
    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        let n = self.check(y)?;
        let k = self.k;
        let data: Vec<f64> = y.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let out: Vec<f64> = data
            .chunks(k * k)
            .map(|row| {
                let asym = (0..k * k)
                    .map(|ij| (row[ij] - row[(ij % k) * k + ij / k]).abs())
                    .fold(0.0, f64::max);
                let (lam, _) = symmetric_eigen(&symmetrize(row, k), k);
                let neg = lam.iter().fold(0.0f64, |a, &l| a.max(-l));
                asym.max(neg)
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
