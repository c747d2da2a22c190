//! Differentiable projections π_C: Rⁿ → C (tutorial §5.1.2, Definition 4).
//!
//! π_C(x) ∈ argmin_{y∈C} D(x, y) + Ω(y) (eq. 19). With D the squared Euclidean distance and
//! Ω = 0 the projection is idempotent, and for a convex C non-expansive; entropic projections
//! (sigmoid, softmax, Sinkhorn) keep outputs in the interior of C and are neither. Composing an
//! objective with a projection, f ∘ π_C, turns the constrained problem (eq. 18) into an
//! unconstrained one (eq. 1), which is how models and solvers handle constraints here.
//!
//! Every projection acts row-wise on `(n, d)` tensors and is differentiable: by autodiff of
//! its formula where that is exact, else by a custom op whose backward is built from tensor
//! ops (so it stays differentiable to second order).

mod birkhoff;
mod boxes;
mod cone;
mod expcone;
mod lml;
mod psd;
mod simplex;

pub use birkhoff::Birkhoff;
pub use boxes::{ClipBox, TanhBox, UnitCube};
pub use cone::{Orthant, SecondOrderCone};
pub use expcone::ExpCone;
pub use lml::CappedSimplex;
pub use psd::{symmetric_eigen, PsdCone};
pub use simplex::{EuclideanSimplex, SoftmaxSimplex};

use candle_core::{CpuStorage, Layout, Shape, Tensor};

use crate::Result;

/// The CPU forward of the custom-op projections: applies `f` to every row (last dimension)
/// of a contiguous f32 or f64 storage in f64 and returns storage of the input's dtype and
/// shape. `f` appends exactly one output row per input row.
pub(crate) fn map_rows_f64(
    storage: &CpuStorage,
    layout: &Layout,
    name: &str,
    mut f: impl FnMut(&[f64], &mut Vec<f64>),
) -> candle_core::Result<(CpuStorage, Shape)> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name}: the input must be contiguous")
    };
    let d = (*layout.shape().dims().last().unwrap_or(&1)).max(1);
    let rows: Vec<f64> = match storage {
        CpuStorage::F32(v) => v[start..end].iter().map(|&x| x as f64).collect(),
        CpuStorage::F64(v) => v[start..end].to_vec(),
        _ => candle_core::bail!("{name}: only f32 and f64 are supported"),
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows.chunks(d) {
        f(row, &mut out);
    }
    let result = match storage {
        CpuStorage::F32(_) => CpuStorage::F32(out.iter().map(|&x| x as f32).collect()),
        _ => CpuStorage::F64(out),
    };
    Ok((result, layout.shape().clone()))
}

/// A differentiable map from Rⁿ onto a set C, row-wise on `(n, d)` tensors.
pub trait Projection: Send + Sync {
    /// A short name.
    fn name(&self) -> &'static str;

    /// π_C(y) for every row.
    fn project(&self, y: &Tensor) -> Result<Tensor>;

    /// How far each row is from C (0 inside), `(n,)`: a membership certificate.
    fn violation(&self, y: &Tensor) -> Result<Tensor>;

    /// Whether π_C ∘ π_C = π_C (Euclidean projections; entropic ones are not).
    fn idempotent(&self) -> bool;

    /// Whether ‖π_C(a) − π_C(b)‖ ≤ ‖a − b‖ (Euclidean projections onto convex sets).
    fn nonexpansive(&self) -> bool;
}

/// y / ‖y‖ row-wise (eq. 84), the Euclidean projection onto the unit sphere Sⁿ⁻¹ (idempotent,
/// not non-expansive: the sphere is not convex). Rows of norm below 1e-12 are divided by 1e-12.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitSphere;

impl Projection for UnitSphere {
    fn name(&self) -> &'static str {
        "sphere"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        let norm = y
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::INFINITY)?;
        Ok(y.broadcast_div(&norm)?)
    }

    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        Ok(y.sqr()?.sum(1)?.sqrt()?.affine(1.0, -1.0)?.abs()?)
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn nonexpansive(&self) -> bool {
        false
    }
}

/// Every projection with default settings on `d`-dimensional rows, for table-driven tests and
/// `amortize list` (the Birkhoff polytope needs d = k², here k = 3).
pub fn projection_zoo() -> Vec<Box<dyn Projection>> {
    vec![
        Box::new(Orthant),
        Box::new(UnitCube),
        Box::new(SoftmaxSimplex),
        Box::new(EuclideanSimplex::default()),
        Box::new(UnitSphere),
        Box::new(TanhBox::new(-2.0, 3.0).expect("valid box")),
        Box::new(ClipBox::new(-0.5, 0.5).expect("valid box")),
        Box::new(SecondOrderCone),
        Box::new(Birkhoff::new(3, 1.0, 1000).expect("valid settings")),
        Box::new(CappedSimplex::new(3.0, 1.0).expect("valid settings")),
        Box::new(PsdCone::new(3).expect("valid size")),
        Box::new(ExpCone),
    ]
}
