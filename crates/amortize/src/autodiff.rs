//! Reverse-mode autodiff helpers on top of candle: second-order gradients and gradients with
//! respect to intermediate tensors.
//!
//! # Second-order gradients
//! candle detaches every gradient it computes unless the environment variable
//! `CANDLE_GRAD_DO_NOT_DETACH` is set to a non-empty value other than `0`. With the variable set,
//! the gradients returned by `backward()` keep their own graph, so an expression such as
//! d/dθ f(ŷθ(x) − α ∇_y f(ŷθ(x); x)) (the meta-gradient of one unrolled step, tutorial eq. 6–9)
//! is exact. candle reads the variable **once per thread**, the first time that thread runs
//! `backward()`, so it must be set before any gradient is taken:
//!
//! * the `amortize` binary calls [`enable_second_order`] first thing in `main`;
//! * the tests get it from `.cargo/config.toml` (`[env]`), because setting environment
//!   variables from multi-threaded test code is unsound;
//! * library users call [`enable_second_order`] at the start of `main`, before spawning threads.
//!
//! Keeping the graph costs a few percent per first-order step; the fused training path
//! ([`crate::model::FusedMlp`]) does not use candle's backward at all.

use candle_core::{Tensor, Var};

use crate::Result;

/// The environment variable candle reads to keep the graph of gradients.
pub const SECOND_ORDER_ENV: &str = "CANDLE_GRAD_DO_NOT_DETACH";

/// Switches on second-order autodiff for every thread started afterwards and for the calling
/// thread if it has not yet run a backward pass.
///
/// Call it at the very start of `main`, before any other thread exists: changing the
/// environment while other threads read it is undefined behaviour on some platforms.
pub fn enable_second_order() {
    if !second_order_requested() {
        // SAFETY (documented precondition): called before other threads are spawned.
        std::env::set_var(SECOND_ORDER_ENV, "1");
    }
}

/// Whether the environment asks candle to keep the graph of gradients.
pub fn second_order_requested() -> bool {
    std::env::var(SECOND_ORDER_ENV)
        .map(|s| !s.is_empty() && s != "0")
        .unwrap_or(false)
}

/// ∇_y of `scalar_fn(y)` at an intermediate tensor `y` (which need not be a `Var`).
///
/// candle's `GradStore` only keeps gradients of variables, so a zero "probe" variable is added to
/// `y` and the probe's gradient is read. With second-order autodiff switched on, the returned
/// gradient stays differentiable with respect to whatever `y` depends on.
pub fn grad_at(y: &Tensor, scalar_fn: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let probe = Var::zeros(y.shape(), y.dtype(), y.device())?;
    let y_probe = y.broadcast_add(probe.as_tensor())?;
    let value = scalar_fn(&y_probe)?;
    let grads = value.backward()?;
    match grads.get(probe.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => Ok(y.zeros_like()?),
    }
}
