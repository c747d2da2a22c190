//! A fast path for the Lasso, min_y ½‖x − Wy‖² + α‖y‖₁ (tutorial eq. 36): the same ISTA and
//! FISTA iterations as [`super::ProximalGradient`] on [`crate::problem::LeastSquares`] with the
//! ℓ1 prox, hand-written in f32 without allocation per iteration.
//!
//! The batch is cut into blocks of [`BLOCK_ROWS`] instances that run all their iterations
//! while their state (y, y_prev, z, gradient: a few hundred KB) stays in cache: per
//! iteration two `gemm` products, r = zWᵀ − x and g = rW, then one fused pass for the prox,
//! the restart test and the momentum. Blocks are split over threads.
//!
//! Two sparse variants were measured and dropped: g = Σ_{z_j ≠ 0} z_j (WᵀW)_j − Wᵀx per
//! instance (bound by the cache bandwidth of streaming rows of WᵀW), and r = Σ_{z_j ≠ 0} z_j W_j
//! with the accumulator in registers; neither beat the dense products, because Lasso iterates
//! are dense for the first tens of iterations (≈ 220 of 256 non-zeros after one step on the
//! benchmark, ≈ 50 after 100) and the products are only 64 wide.

use candle_core::{DType, Tensor};

use crate::linalg::{matmul, View};
use crate::problem::LeastSquares;
use crate::{Error, Result};

/// # Fused ISTA / FISTA for the Lasso
/// ISTA: y ← soft(y − s(Gy − b), sα). FISTA: the momentum of [`super::ProximalGradient`]
/// (t_{k+1} = (1 + √(1 + 4t_k²))/2, z = y + ((t_k − 1)/t_{k+1})(y − y_prev)) with optional
/// adaptive restart; the iterates match it up to f32 rounding (a test checks this).
///
/// ## Optimality residual
/// The gradient mapping at the last momentum point, ‖z − y⁺‖/s (for ISTA z = y), per instance;
/// with a tolerance, each instance stops on its own once it is at most `tol`.
#[derive(Debug, Clone)]
pub struct FusedLasso {
    n: usize,
    m: usize,
    w: Vec<f32>,
    step: f32,
    alpha: f32,
    accelerated: bool,
    restart: bool,
}

/// What [`FusedLasso::run`] did per instance.
#[derive(Debug, Clone, Default)]
pub struct FusedLassoReport {
    /// Iterations per instance.
    pub iters: Vec<usize>,
    /// The final gradient-mapping norm per instance.
    pub residual: Vec<f32>,
}

impl FusedLasso {
    /// ISTA (`accelerated` false) or FISTA (with `restart` or not) for `problem`'s dictionary,
    /// ℓ1 weight `alpha` ≥ 0 and step `step` ∈ (0, 1/L].
    pub fn new(
        problem: &LeastSquares,
        alpha: f64,
        step: f64,
        accelerated: bool,
        restart: bool,
    ) -> Result<Self> {
        if !(alpha.is_finite() && alpha >= 0.0 && step.is_finite() && step > 0.0) {
            return Err(Error::invalid(format!(
                "fused lasso: need alpha >= 0 and step > 0, got {alpha}, {step}"
            )));
        }
        let (m, n) = problem.dictionary().dims2()?;
        let w64: Vec<f64> = problem.dictionary().flatten_all()?.to_vec1()?;
        Ok(FusedLasso {
            n,
            m,
            w: w64.iter().map(|&v| v as f32).collect(),
            step: step as f32,
            alpha: alpha as f32,
            accelerated,
            restart: restart && accelerated,
        })
    }

    /// Runs at most `max_iters` iterations on every instance, rows of `x` (`batch × m`), from
    /// and into `y` (`batch × n`, the warm start on entry), stopping an instance early once its
    /// residual is at most `tol` (0: run all iterations); `threads` ≥ 1 split the batch.
    pub fn run(
        &self,
        x: &[f32],
        y: &mut [f32],
        max_iters: usize,
        tol: f32,
        threads: usize,
    ) -> Result<FusedLassoReport> {
        let (m, n) = (self.m, self.n);
        if !x.len().is_multiple_of(m) || y.len() != x.len() / m * n {
            return Err(Error::invalid(format!(
                "fused lasso: x has {} values and y {}; expected rows of {m} and {n}",
                x.len(),
                y.len()
            )));
        }
        if x.iter().chain(y.iter()).any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "fused lasso: x or y contains NaN or infinite values",
            ));
        }
        let batch = x.len() / m;
        let mut report = FusedLassoReport {
            iters: vec![0; batch],
            residual: vec![0.0; batch],
        };
        let blocks = batch.div_ceil(BLOCK_ROWS).max(1);
        let threads = threads.clamp(1, blocks);
        let rows = blocks.div_ceil(threads) * BLOCK_ROWS;
        std::thread::scope(|scope| {
            let chunks = x.chunks(rows * m).zip(y.chunks_mut(rows * n)).zip(
                report
                    .iters
                    .chunks_mut(rows)
                    .zip(report.residual.chunks_mut(rows)),
            );
            for ((xc, yc), (ic, rc)) in chunks {
                scope.spawn(move || self.run_rows(xc, yc, ic, rc, max_iters, tol));
            }
        });
        Ok(report)
    }

    /// [`FusedLasso::run`] on tensors: signals `(batch, m)` and warm start `(batch, n)`.
    pub fn solve(
        &self,
        x: &Tensor,
        y0: &Tensor,
        max_iters: usize,
        tol: f32,
    ) -> Result<(Tensor, FusedLassoReport)> {
        let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut ys: Vec<f32> = y0.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let report = self.run(&xs, &mut ys, max_iters, tol, 1)?;
        let rows = xs.len() / self.m;
        Ok((Tensor::from_vec(ys, (rows, self.n), x.device())?, report))
    }

    /// Dispatches once to the inner loops compiled for the best instruction set available.
    fn run_rows(
        &self,
        x: &[f32],
        y: &mut [f32],
        iters: &mut [usize],
        res: &mut [f32],
        max_iters: usize,
        tol: f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            if fma && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked here).
                return unsafe { self.rows_avx512(x, y, iters, res, max_iters, tol) };
            }
            if fma && std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 and FMA (checked here).
                return unsafe { self.rows_avx2(x, y, iters, res, max_iters, tol) };
            }
        }
        self.rows::<false>(x, y, iters, res, max_iters, tol)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn rows_avx512(
        &self,
        x: &[f32],
        y: &mut [f32],
        iters: &mut [usize],
        res: &mut [f32],
        max_iters: usize,
        tol: f32,
    ) {
        self.rows::<true>(x, y, iters, res, max_iters, tol)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2(
        &self,
        x: &[f32],
        y: &mut [f32],
        iters: &mut [usize],
        res: &mut [f32],
        max_iters: usize,
        tol: f32,
    ) {
        self.rows::<true>(x, y, iters, res, max_iters, tol)
    }

    /// The iterations, block by block; `FMA` uses fused multiply-adds (only where the CPU has
    /// them).
    #[inline(always)]
    fn rows<const FMA: bool>(
        &self,
        x: &[f32],
        y: &mut [f32],
        iters: &mut [usize],
        res: &mut [f32],
        max_iters: usize,
        tol: f32,
    ) {
        let (m, n) = (self.m, self.n);
        let mut state = BlockState::new(BLOCK_ROWS, m, n);
        let blocks = x
            .chunks(BLOCK_ROWS * m)
            .zip(y.chunks_mut(BLOCK_ROWS * n))
            .zip(iters.chunks_mut(BLOCK_ROWS).zip(res.chunks_mut(BLOCK_ROWS)));
        for ((xb, yb), (ib, rb)) in blocks {
            self.block::<FMA>(&mut state, xb, yb, ib, rb, max_iters, tol);
        }
    }

    /// All iterations of one block of rows; rows that reach `tol` freeze (their prox step is
    /// skipped) while the others go on.
    #[inline(always)]
    fn block<const FMA: bool>(
        &self,
        st: &mut BlockState,
        x: &[f32],
        y: &mut [f32],
        iters: &mut [usize],
        res: &mut [f32],
        max_iters: usize,
        tol: f32,
    ) {
        let (m, n) = (self.m, self.n);
        let rows = x.len() / m;
        let (z, r, g) = (
            &mut st.z[..rows * n],
            &mut st.r[..rows * m],
            &mut st.g[..rows * n],
        );
        let (prev, t) = (&mut st.prev[..rows * n], &mut st.t[..rows]);
        prev.copy_from_slice(y);
        t.fill(1.0);
        let active = &mut st.active[..rows];
        active.fill(true);
        iters.fill(0);
        res.fill(f32::INFINITY);
        let mut remaining = rows;
        let mut k = 0;
        while k < max_iters && remaining > 0 {
            // Momentum points (z = y for ISTA).
            for i in 0..rows {
                let (beta, _) = self.momentum(t[i]);
                let (zi, yi, pi) = (
                    &mut z[i * n..(i + 1) * n],
                    &y[i * n..(i + 1) * n],
                    &prev[i * n..(i + 1) * n],
                );
                for j in 0..n {
                    zi[j] = yi[j] + beta * (yi[j] - pi[j]);
                }
            }
            // r = zWᵀ − x, g = rW.
            r.copy_from_slice(x);
            for v in r.iter_mut() {
                *v = -*v;
            }
            matmul(r, View::new(z, rows, n), View::new(&self.w, m, n).t(), true);
            matmul(g, View::new(r, rows, m), View::new(&self.w, m, n), false);
            for i in 0..rows {
                if !active[i] {
                    continue;
                }
                let span = i * n..(i + 1) * n;
                let (gap, momentum_ok) = shrink::<FMA>(
                    &z[span.clone()],
                    &g[span.clone()],
                    &mut y[span.clone()],
                    &mut prev[span],
                    self.step,
                    self.step * self.alpha,
                );
                let (_, t_next) = self.momentum(t[i]);
                t[i] = if self.restart && !momentum_ok {
                    1.0
                } else {
                    t_next
                };
                iters[i] += 1;
                res[i] = gap.sqrt() / self.step;
                if tol > 0.0 && res[i] <= tol {
                    active[i] = false;
                    remaining -= 1;
                }
            }
            k += 1;
        }
    }

    /// (β, t_next) of the momentum step from t (β = 0 for ISTA).
    #[inline(always)]
    fn momentum(&self, t: f32) -> (f32, f32) {
        if self.accelerated {
            let t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t).sqrt());
            ((t - 1.0) / t_next, t_next)
        } else {
            (0.0, t)
        }
    }
}

/// Instances per block: their iteration state stays in cache across iterations.
pub const BLOCK_ROWS: usize = 256;

/// Buffers of one block, reused across blocks.
struct BlockState {
    z: Vec<f32>,
    r: Vec<f32>,
    g: Vec<f32>,
    prev: Vec<f32>,
    t: Vec<f32>,
    active: Vec<bool>,
}

impl BlockState {
    fn new(rows: usize, m: usize, n: usize) -> Self {
        BlockState {
            z: vec![0.0; rows * n],
            r: vec![0.0; rows * m],
            g: vec![0.0; rows * n],
            prev: vec![0.0; rows * n],
            t: vec![1.0; rows],
            active: vec![true; rows],
        }
    }
}

/// Lanes of the partial sums in [`shrink`] (float sums only vectorise when split by hand).
const LANES: usize = 16;

/// y⁺ = soft(z − s·g, k) written over y, with the old y moved to `prev`; returns
/// (‖z − y⁺‖², ⟨z − y⁺, y⁺ − y⟩ ≤ 0).
#[inline(always)]
fn shrink<const FMA: bool>(
    z: &[f32],
    g: &[f32],
    y: &mut [f32],
    prev: &mut [f32],
    s: f32,
    k: f32,
) -> (f32, bool) {
    let (mut gap, mut dir) = ([0.0f32; LANES], [0.0f32; LANES]);
    let full = z.len() / LANES * LANES;
    let (zc, gc) = (z[..full].chunks_exact(LANES), g[..full].chunks_exact(LANES));
    let (yc, pc) = (
        y[..full].chunks_exact_mut(LANES),
        prev[..full].chunks_exact_mut(LANES),
    );
    for (((zl, gl), yl), pl) in zc.zip(gc).zip(yc).zip(pc) {
        for l in 0..LANES {
            let v = if FMA {
                gl[l].mul_add(-s, zl[l])
            } else {
                zl[l] - s * gl[l]
            };
            let p = (v.abs() - k).max(0.0).copysign(v);
            let d = zl[l] - p;
            gap[l] += d * d;
            dir[l] += d * (p - yl[l]);
            pl[l] = yl[l];
            yl[l] = p;
        }
    }
    for j in full..z.len() {
        let v = z[j] - s * g[j];
        let p = (v.abs() - k).max(0.0).copysign(v);
        let d = z[j] - p;
        gap[0] += d * d;
        dir[0] += d * (p - y[j]);
        prev[j] = y[j];
        y[j] = p;
    }
    (gap.iter().sum(), dir.iter().sum::<f32>() <= 0.0)
}
