//! Custom candle operations the tutorial's problems need and candle lacks.
//!
//! Each op has a CPU forward written in plain Rust and a backward made of tensor ops, so that it
//! is itself differentiable (second-order autodiff, see [`crate::autodiff`]).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::Result;

/// arccos applied elementwise, d/dc arccos(c) = −1/√(1 − c²).
///
/// The input must lie in [−1, 1]; callers clamp first (see [`safe_acos`]).
#[derive(Debug, Clone, Copy)]
pub struct Acos;

fn map_storage(
    storage: &CpuStorage,
    layout: &Layout,
    f32_fn: fn(f32) -> f32,
    f64_fn: fn(f64) -> f64,
    name: &str,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name}: the input must be contiguous (call .contiguous() first)")
    };
    let out = match storage {
        CpuStorage::F32(v) => CpuStorage::F32(v[start..end].iter().map(|&a| f32_fn(a)).collect()),
        CpuStorage::F64(v) => CpuStorage::F64(v[start..end].iter().map(|&a| f64_fn(a)).collect()),
        _ => candle_core::bail!("{name}: only f32 and f64 are supported"),
    };
    Ok((out, layout.shape().clone()))
}

/// arccos of every element of `c` (any layout), differentiable to any order.
pub fn acos(c: &Tensor) -> Result<Tensor> {
    Ok(c.contiguous()?.apply_op1(Acos)?)
}

impl CustomOp1 for Acos {
    fn name(&self) -> &'static str {
        "acos"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        map_storage(storage, layout, f32::acos, f64::acos, "acos")
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // −g / √(1 − c²), as tensor ops so that the backward is differentiable again.
        let one_minus_sq = arg.sqr()?.affine(-1.0, 1.0)?;
        let g = grad_res.div(&one_minus_sq.sqrt()?)?.neg()?;
        Ok(Some(g))
    }
}

/// The margin kept from ±1 by [`safe_acos`], per dtype: arccos' derivative is infinite at ±1.
pub fn acos_margin(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-9,
        _ => 1e-6,
    }
}

/// arccos(clamp(c, −1 + ε, 1 − ε)): the Riemannian distance on the sphere without infinite
/// gradients where c = ±1 (the clamp's gradient is zero outside the interval).
pub fn safe_acos(c: &Tensor) -> Result<Tensor> {
    let eps = acos_margin(c.dtype());
    acos(&c.clamp(-1.0 + eps, 1.0 - eps)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn acos_forward_matches_std() -> Result<()> {
        let c = Tensor::new(&[-0.9f64, -0.3, 0.0, 0.5, 0.99], &Device::Cpu)?;
        let got: Vec<f64> = safe_acos(&c)?.to_vec1()?;
        for (g, x) in got.iter().zip([-0.9f64, -0.3, 0.0, 0.5, 0.99]) {
            assert!((g - x.acos()).abs() < 1e-12, "{g} vs {}", x.acos());
        }
        Ok(())
    }

    #[test]
    fn acos_backward_matches_finite_differences() -> Result<()> {
        let xs = [-0.8f64, -0.2, 0.1, 0.7];
        let v = Var::new(&xs, &Device::Cpu)?;
        let y = v.as_tensor().apply_op1(Acos)?.sum_all()?;
        let g: Vec<f64> = y.backward()?.get(v.as_tensor()).unwrap().to_vec1()?;
        let h = 1e-6;
        for (gi, x) in g.iter().zip(xs) {
            let fd = ((x + h).acos() - (x - h).acos()) / (2.0 * h);
            assert!((gi - fd).abs() < 1e-6, "{gi} vs {fd}");
        }
        Ok(())
    }

    #[test]
    fn acos_works_on_strided_input() -> Result<()> {
        let c = Tensor::new(&[[0.1f32, 0.2], [0.3, 0.4]], &Device::Cpu)?.t()?;
        let got: Vec<Vec<f32>> = acos(&c)?.to_vec2()?;
        assert!((got[0][1] - 0.3f32.acos()).abs() < 1e-6);
        Ok(())
    }
}
