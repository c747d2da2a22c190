//! The OSQP algorithm (Stellato et al. 2020; tutorial eq. 58–59): ADMM on
//! min ½yᵀPy + qᵀy s.t. Ay = z, z ∈ [l, u], with a factor-once KKT solve, over-relaxation,
//! per-constraint step sizes ρ with adaptive updates, primal/dual infeasibility detection,
//! warm starts and residual-based termination.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::kkt::Kkt;
use super::scaling::{equilibrate, Scaled};
use super::QpProblem;
use crate::{Error, Result};

const RHO_MIN: f64 = 1e-6;
const RHO_MAX: f64 = 1e6;
/// ρ for equality rows is this factor times the base ρ (they are always active).
const RHO_EQUALITY_FACTOR: f64 = 1e3;
/// Rows with u − l below this are equalities.
const EQUALITY_TOL: f64 = 1e-4;
const DIVISION_TOL: f64 = 1e-30;

/// Features per constraint that a [`RhoPolicy`] reads, in order (scaled units, slog(v) =
/// sign(v)·log₁₀(1 + 10⁴|v|)/4): log₁₀ρᵢ / 3, slog((Ay)ᵢ − zᵢ), slog(λᵢ), slog of the slack
/// min(zᵢ − lᵢ, uᵢ − zᵢ) (10⁴ for a free side), slog((Ay)ᵢ), log₁₀(ρ̂/ρ)/3 with ρ̂ OSQP's
/// residual-balancing estimate, 1 for an equality row (else 0), log₁₀(iteration)/4.
pub const RHO_FEATURES: usize = 8;

/// A step-size policy for ADMM (RLQP, tutorial §6.4.5): at every adaptation point it maps each
/// constraint's features (`m` rows of [`RHO_FEATURES`], row-major) to Δᵢ, and constraint i gets
/// ρᵢ = ρ̂ᵢ·10^Δᵢ (Δ clamped to [−3, 3]), where ρ̂ᵢ is OSQP's own choice (the residual-balancing
/// estimate, ×10³ on equality rows). Δ = 0 everywhere is OSQP's rule.
pub trait RhoPolicy: Sync {
    /// Δ for each of the `m` constraints.
    fn adjust(&self, features: &[f64], m: usize) -> Vec<f64>;
}

fn slog(v: f64) -> f64 {
    // In f32, as the policy runs (f32's log10 is cheaper); clamped to stay finite.
    let a = (1.0 + 1e4 * v.abs()).min(f64::from(f32::MAX)) as f32;
    v.signum() * f64::from(a.log10() / 4.0)
}

/// The settings of [`Admm`], defaulting to OSQP's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmmSettings {
    /// Initial base step size ρ (default 0.1).
    pub rho: f64,
    /// Proximal regularisation σ of the y-update (default 1e-6).
    pub sigma: f64,
    /// Over-relaxation α ∈ (0, 2) (default 1.6).
    pub alpha: f64,
    /// Absolute tolerance (default 1e-3).
    pub eps_abs: f64,
    /// Relative tolerance (default 1e-3).
    pub eps_rel: f64,
    /// Primal infeasibility tolerance (default 1e-4).
    pub eps_primal_infeasible: f64,
    /// Dual infeasibility tolerance (default 1e-4).
    pub eps_dual_infeasible: f64,
    /// Iteration budget (default 4000).
    pub max_iters: usize,
    /// Time budget in seconds (default none).
    pub time_limit: Option<f64>,
    /// Ruiz equilibration rounds (default 10, 0 = off).
    pub scaling: usize,
    /// Adapt ρ from the ratio of the residuals (default true).
    pub adaptive_rho: bool,
    /// Iterations between ρ estimates (default 50, OSQP 1.x's: with it and termination checked
    /// every iteration this ADMM takes exactly OSQP C 1.1.3's iterations on control QPs; on
    /// other classes it is within −44%…+3% of them, mostly fewer).
    pub adaptive_rho_interval: usize,
    /// Refactor only when the estimate differs by more than this factor (default 5).
    pub adaptive_rho_tolerance: f64,
    /// Iterations between termination checks (default 25, OSQP's; the first iteration is
    /// always checked, so that a warm start at a solution stops at once).
    pub check_every: usize,
    /// How the KKT system is solved (default `auto`: the cheaper form per QP).
    pub kkt: KktForm,
    /// The fill-reducing ordering of the sparse KKT factor (default `auto`: a cheap ordering
    /// when its factor is certified within 20% of the fewest entries possible, else AMD).
    pub ordering: KktOrdering,
    /// With a ρ policy: double the interval after every consultation (default true:
    /// O(log N) consultations and refactorisations per solve); false consults it every
    /// `adaptive_rho_interval` iterations.
    pub policy_backoff: bool,
    /// With a ρ policy: also consult it before the first iteration (default false).
    pub policy_at_start: bool,
    /// With a ρ policy: stop consulting it after this many changes of ρ (the start's
    /// included), keeping the last ρ (default none: no limit; at least 1). Each change is a
    /// KKT refactorisation. A start consultation counts as a change when it moves ρ away from
    /// a fresh start's base ρ, also in a sequence, where the factor may already hold the ρ
    /// it asks for (so `Some(1)` with `policy_at_start` is "ρ chosen once per QP").
    pub policy_max_changes: Option<usize>,
    /// In a sequence ([`Admm::solve_sequence`], [`AdmmWorkspace::reload`]): start each QP
    /// from the previous one's iterate (y, z, λ; z moved into the new bounds) instead of zero
    /// (default false), unless the previous solve ended infeasible or in a numerical error.
    /// OSQP's `warm_starting` in its update mode: it pays when consecutive QPs are close, as in
    /// receding-horizon control.
    pub warm_start_sequence: bool,
}

/// How ADMM solves its KKT system (module `kkt`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KktForm {
    /// The reduced form when P is dense (≥ ¼ of its entries), else the sparse one.
    #[default]
    Auto,
    /// Sparse LDLᵀ of the quasi-definite (n+m)×(n+m) matrix, simplicial or supernodal by
    /// the density of its factor.
    Sparse,
    /// The sparse form with a simplicial factor (OSQP's QDLDL layout).
    SparseSimplicial,
    /// The sparse form with a supernodal factor (dense blocks).
    SparseSupernodal,
    /// Dense Cholesky of the reduced n×n matrix P + σI + AᵀRA.
    Reduced,
}

/// The fill-reducing ordering of the sparse KKT factor (module `ordering`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KktOrdering {
    /// Rows by ascending degree when that factor has at most 1.2 times the entries of K's
    /// triangle (no ordering has fewer than K's triangle), else AMD: the same factor size
    /// within 20%, without AMD's cost where the cheap ordering leaves almost no fill.
    #[default]
    Auto,
    /// Approximate minimum degree always (OSQP's ordering).
    Amd,
}

impl AdmmSettings {
    /// OSQP's defaults with eps_abs = eps_rel = `eps` and a budget of 200,000 iterations: the
    /// settings for reference solutions and training labels (tight `eps` such as 1e-9).
    pub fn accurate(eps: f64) -> Self {
        AdmmSettings {
            eps_abs: eps,
            eps_rel: eps,
            max_iters: 200_000,
            ..AdmmSettings::default()
        }
    }
}

impl Default for AdmmSettings {
    fn default() -> Self {
        AdmmSettings {
            rho: 0.1,
            sigma: 1e-6,
            alpha: 1.6,
            eps_abs: 1e-3,
            eps_rel: 1e-3,
            eps_primal_infeasible: 1e-4,
            eps_dual_infeasible: 1e-4,
            max_iters: 4000,
            time_limit: None,
            scaling: 10,
            adaptive_rho: true,
            adaptive_rho_interval: 50,
            adaptive_rho_tolerance: 5.0,
            check_every: 25,
            kkt: KktForm::Auto,
            ordering: KktOrdering::Auto,
            policy_backoff: true,
            policy_at_start: false,
            policy_max_changes: None,
            warm_start_sequence: false,
        }
    }
}

impl AdmmSettings {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let nonneg = |v: f64| v.is_finite() && v >= 0.0;
        let problems = [
            (positive(self.rho), "rho must be > 0"),
            (positive(self.sigma), "sigma must be > 0"),
            (
                self.alpha > 0.0 && self.alpha < 2.0,
                "alpha must be in (0, 2)",
            ),
            (
                nonneg(self.eps_abs) && nonneg(self.eps_rel),
                "eps_abs and eps_rel must be >= 0",
            ),
            (
                nonneg(self.eps_primal_infeasible) && nonneg(self.eps_dual_infeasible),
                "infeasibility tolerances must be >= 0",
            ),
            (self.max_iters >= 1, "max_iters must be >= 1"),
            (
                self.time_limit.is_none_or(positive),
                "time_limit must be > 0",
            ),
            (self.scaling <= 100, "scaling must be <= 100 rounds"),
            (
                self.adaptive_rho_interval >= 1 && self.adaptive_rho_tolerance >= 1.0,
                "adaptive_rho_interval must be >= 1 and adaptive_rho_tolerance >= 1",
            ),
            (self.check_every >= 1, "check_every must be >= 1"),
            (
                self.policy_max_changes != Some(0),
                "policy_max_changes must be >= 1 (leave it out for no limit)",
            ),
        ];
        match problems.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(Error::invalid(format!("ADMM settings: {msg}"))),
            None => Ok(()),
        }
    }
}

/// How an ADMM solve ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QpStatus {
    /// Primal and dual residuals are within tolerance.
    Solved,
    /// A certificate shows that no y satisfies l ≤ Ay ≤ u.
    PrimalInfeasible,
    /// A certificate shows that the objective is unbounded below on the feasible set.
    DualInfeasible,
    /// The iteration budget ran out first.
    MaxIterations,
    /// The time budget ran out first.
    MaxTime,
    /// An iterate became NaN or infinite.
    NumericalError,
}

/// The result of an ADMM solve, in the units of the original (unscaled) problem.
#[derive(Debug, Clone, Serialize)]
pub struct QpSolution {
    /// How the solve ended.
    pub status: QpStatus,
    /// The primal iterate y (for `DualInfeasible`, the last one; see `certificate`).
    pub y: Vec<f64>,
    /// The constraint multipliers λ (Py + q + Aᵀλ = 0 at a solution).
    pub lambda: Vec<f64>,
    /// ½yᵀPy + qᵀy.
    pub objective: f64,
    /// ‖Ay − z‖∞.
    pub primal_residual: f64,
    /// ‖Py + q + Aᵀλ‖∞.
    pub dual_residual: f64,
    /// Iterations taken.
    pub iters: usize,
    /// How often ρ changed (each change refactors the KKT matrix).
    pub rho_updates: usize,
    /// Numeric factorisations of the KKT matrix, the first included.
    pub factorisations: usize,
    /// Wall-clock seconds, set-up (scaling, factorisation) included.
    pub elapsed: f64,
    /// The part of `elapsed` spent on the set-up that does not depend on ρ: scaling, KKT
    /// assembly, ordering and symbolic analysis (for a QP moved to by
    /// [`AdmmWorkspace::reload`], the check that its P and A are the analysed ones and the
    /// rescaling of its vectors). `elapsed − setup_elapsed` is the solve phase: numeric
    /// factorisations and iterations, OSQP's `solve_time` plus its first factorisation.
    pub setup_elapsed: f64,
    /// The infeasibility certificate: δλ (primal) or δy (dual), normalised to ‖·‖∞ = 1.
    pub certificate: Option<Vec<f64>>,
}

/// # ADMM for QPs (the OSQP algorithm)
/// With σ > 0, step sizes ρ ∈ Rᵐ₊ and over-relaxation α, one iteration on the scaled data is
///
/// ỹ = (P + σI + Aᵀdiag(ρ)A)⁻¹(σyᵗ − q + Aᵀ(ρ∘zᵗ − λᵗ)),  z̃ = Aỹ,
/// yᵗ⁺¹ = αỹ + (1−α)yᵗ,  zᵗ⁺¹ = Π_[l,u](αz̃ + (1−α)zᵗ + λᵗ/ρ),
/// λᵗ⁺¹ = λᵗ + ρ∘(αz̃ + (1−α)zᵗ − zᵗ⁺¹),
///
/// with ỹ and z̃ from the quasi-definite KKT system of eq. 58 (module `kkt`: a sparse LDLᵀ,
/// ordered and analysed once and refactored numerically whenever ρ changes, or for a dense P
/// the dense Cholesky of its reduced n×n form).
/// Equality rows get 10³ρ and free rows 10⁻⁶; every `adaptive_rho_interval` iterations ρ is
/// re-estimated as ρ·√((‖Ay − z‖/max(‖Ay‖, ‖z‖)) / (‖Py + q + Aᵀλ‖/max(‖Py‖, ‖Aᵀλ‖, ‖q‖)))
/// and the matrix refactored when that moves ρ by more than `adaptive_rho_tolerance`; when an
/// update reverses the previous one the interval doubles (without this, ρ can oscillate for
/// thousands of iterations on some of OSQP's random QPs, as OSQP itself does at tight
/// tolerances).
///
/// ## Optimality residual
/// Terminates when ‖Ay − z‖∞ ≤ ε_abs + ε_rel max(‖Ay‖∞, ‖z‖∞) and
/// ‖Py + q + Aᵀλ‖∞ ≤ ε_abs + ε_rel max(‖Py‖∞, ‖Aᵀλ‖∞, ‖q‖∞), in unscaled units; reports
/// primal infeasibility when δλ = λᵗ⁺¹ − λᵗ has ‖Aᵀδλ‖∞ ≤ ε‖δλ‖∞ and
/// uᵀδλ₊ + lᵀδλ₋ < −ε‖δλ‖∞, and dual infeasibility when δy has ‖Pδy‖∞ ≤ ε‖δy‖∞,
/// qᵀδy < −ε‖δy‖∞ and Aδy in the recession cone of [l, u] up to ε‖δy‖∞.
///
/// ## Not batched as tensors
/// Each instance has its own P and A, so there is no shared matrix to batch over; a batch is
/// solved instance by instance in f64 with sparse products ([`Admm::solve_batch`] can split it
/// over threads). [`AdmmWorkspace`] exposes single iterations and ρ for learned policies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Admm {
    settings: AdmmSettings,
}

impl Admm {
    /// ADMM with checked `settings`.
    pub fn new(settings: AdmmSettings) -> Result<Self> {
        settings.validate()?;
        Ok(Admm { settings })
    }

    /// The settings.
    pub fn settings(&self) -> &AdmmSettings {
        &self.settings
    }

    /// Solves `qp`, from zero or from a warm start (y, λ).
    pub fn solve(&self, qp: &QpProblem, warm: Option<(&[f64], &[f64])>) -> Result<QpSolution> {
        self.solve_with_policy(qp, warm, None)
    }

    /// Solves `qp` with the step sizes ρ chosen by `policy` instead of OSQP's rule; `None` is
    /// [`Admm::solve`]. The policy is consulted after `adaptive_rho_interval` iterations and
    /// again after the same interval while it keeps ρ; every time it changes ρ (a KKT
    /// refactorisation) the interval doubles.
    /// Termination is unchanged: "solved" only when the residual criterion holds.
    pub fn solve_with_policy(
        &self,
        qp: &QpProblem,
        warm: Option<(&[f64], &[f64])>,
        policy: Option<&dyn RhoPolicy>,
    ) -> Result<QpSolution> {
        let start = Instant::now();
        let at_start = policy.filter(|_| self.settings.policy_at_start);
        // The start consultation factors for the policy's ρ; factoring for OSQP's first would
        // be wasted.
        let mut w = AdmmWorkspace::analysed(qp, self.settings, at_start.is_some())?;
        w.policy = policy;
        if let Some((y, lambda)) = warm {
            w.warm_start(y, lambda)?;
        }
        w.run(start)
    }

    /// Solves a parametric family one QP after another, OSQP-style: every QP shares the first
    /// one's P and A (only q, l and u change), so the scaling, the ordering and symbolic
    /// analysis of the KKT matrix, and its factor at the current ρ are computed once and
    /// reused ([`AdmmWorkspace::reload`]). ρ carries over from one QP to the next (OSQP's
    /// update keeps it too), each QP starts from zero (or from the previous one's iterate with
    /// `warm_start_sequence`), and `policy` (if any) chooses ρ as in
    /// [`Admm::solve_with_policy`]. Each solution's `elapsed` is its own time, the first one's
    /// with the set-up.
    pub fn solve_sequence(
        &self,
        qps: &[QpProblem],
        policy: Option<&dyn RhoPolicy>,
    ) -> Result<Vec<QpSolution>> {
        let Some(first) = qps.first() else {
            return Ok(Vec::new());
        };
        let start = Instant::now();
        let defer = policy.is_some() && self.settings.policy_at_start;
        let mut w = AdmmWorkspace::analysed(first, self.settings, defer)?;
        w.policy = policy;
        let mut solutions = vec![w.run(start)?];
        for (k, qp) in qps.iter().enumerate().skip(1) {
            let start = Instant::now();
            w.reload(qp)
                .and_then(|()| w.run(start))
                .map(|s| solutions.push(s))
                .map_err(|e| Error::invalid(format!("QP {k} of the sequence: {e}")))?;
        }
        Ok(solutions)
    }

    /// Solves every QP of a batch, split over `threads` ≥ 1 threads, in order.
    pub fn solve_batch(&self, qps: &[QpProblem], threads: usize) -> Result<Vec<QpSolution>> {
        self.solve_batch_with_policy(qps, threads, None)
    }

    /// [`Admm::solve_batch`] with the step sizes chosen by `policy`
    /// ([`Admm::solve_with_policy`]).
    pub fn solve_batch_with_policy(
        &self,
        qps: &[QpProblem],
        threads: usize,
        policy: Option<&dyn RhoPolicy>,
    ) -> Result<Vec<QpSolution>> {
        let threads = threads.clamp(1, qps.len().max(1));
        if threads == 1 {
            return qps
                .iter()
                .map(|qp| self.solve_with_policy(qp, None, policy))
                .collect();
        }
        let chunk = qps.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = qps
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|qp| self.solve_with_policy(qp, None, policy))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(qps.len());
            for h in handles {
                all.extend(
                    h.join()
                        .map_err(|_| Error::invalid("an ADMM thread panicked"))??,
                );
            }
            Ok(all)
        })
    }
}

/// The state of one ADMM solve on scaled data; step it, change ρ, read residuals.
pub struct AdmmWorkspace<'a> {
    qp: &'a QpProblem,
    settings: AdmmSettings,
    data: Scaled,
    rho: f64,
    /// ρ per constraint, always the ρ of the current numeric factor.
    rho_vec: Vec<f64>,
    /// After a [`AdmmWorkspace::reload`] with a start policy: the start consultation's log ρ
    /// feature shows the initial base ρ, as in a fresh solve, not the carried-over ρ.
    fresh_start_features: bool,
    kkt: Kkt,
    y: Vec<f64>,
    z: Vec<f64>,
    lambda: Vec<f64>,
    delta_y: Vec<f64>,
    delta_lambda: Vec<f64>,
    rhs: Vec<f64>,
    z_tilde: Vec<f64>,
    ay: Vec<f64>,
    py: Vec<f64>,
    at_lambda: Vec<f64>,
    work_n: Vec<f64>,
    work_m: Vec<f64>,
    /// Seconds of the ρ-independent set-up of the current QP ([`QpSolution::setup_elapsed`]).
    setup_seconds: f64,
    /// How the last [`Self::run`] ended (a warm sequence keeps only a usable iterate).
    last_status: Option<QpStatus>,
    iters: usize,
    rho_updates: usize,
    factorisations: usize,
    /// Iteration of the next ρ estimate; the interval doubles whenever an update reverses the
    /// direction of the previous one (ρ oscillating between two values).
    next_rho_check: usize,
    rho_interval: usize,
    last_rho_direction: f64,
    policy: Option<&'a dyn RhoPolicy>,
}

/// Unscaled residuals and the tolerances they are compared with.
#[derive(Debug, Clone, Copy)]
struct Residuals {
    primal: f64,
    dual: f64,
    eps_primal: f64,
    eps_dual: f64,
}

/// The kind of a constraint row l ≤ aᵀy ≤ u, which sets its share of OSQP's base ρ (10⁻⁶
/// on free rows, 10³ρ on equalities, ρ on the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// l = −∞ and u = +∞.
    Free,
    /// u − l below 10⁻⁴.
    Equality,
    /// Everything else.
    Inequality,
}

fn row_kind(l: f64, u: f64) -> RowKind {
    if l == f64::NEG_INFINITY && u == f64::INFINITY {
        RowKind::Free
    } else if u - l < EQUALITY_TOL {
        RowKind::Equality
    } else {
        RowKind::Inequality
    }
}

/// ρᵢ for base `rho`: free rows get 1e-6, equality rows 1e3·ρ, the others ρ.
fn base_rho(d: &Scaled, i: usize, rho: f64) -> f64 {
    match row_kind(d.l[i], d.u[i]) {
        RowKind::Free => RHO_MIN,
        RowKind::Equality => (RHO_EQUALITY_FACTOR * rho).min(RHO_MAX),
        RowKind::Inequality => rho,
    }
}

fn inf_norm(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

impl<'a> AdmmWorkspace<'a> {
    /// Scales `qp`, sets ρ per constraint and factors the KKT matrix; starts from zero.
    pub fn new(qp: &'a QpProblem, settings: AdmmSettings) -> Result<Self> {
        Self::analysed(qp, settings, false)
    }

    /// [`Self::new`], with the numeric factorisation left to the first ρ change when `defer`
    /// (the caller must then set ρ before stepping: [`Self::consult_at_start`] does).
    fn analysed(qp: &'a QpProblem, settings: AdmmSettings, defer: bool) -> Result<Self> {
        let start = Instant::now();
        settings.validate()?;
        let data = equilibrate(qp, settings.scaling);
        let (n, m) = (qp.n(), qp.m());
        let rho = settings.rho.clamp(RHO_MIN, RHO_MAX);
        let rho_vec: Vec<f64> = (0..m).map(|i| base_rho(&data, i, rho)).collect();
        let kkt = Kkt::new(
            &data.p,
            &data.a,
            settings.sigma,
            settings.kkt,
            settings.ordering,
        )?;
        let mut w = AdmmWorkspace {
            qp,
            settings,
            data,
            rho,
            rho_vec,
            fresh_start_features: false,
            kkt,
            y: vec![0.0; n],
            z: vec![0.0; m],
            lambda: vec![0.0; m],
            delta_y: vec![0.0; n],
            delta_lambda: vec![0.0; m],
            rhs: vec![0.0; n],
            z_tilde: vec![0.0; m],
            ay: vec![0.0; m],
            py: vec![0.0; n],
            at_lambda: vec![0.0; n],
            work_n: vec![0.0; n],
            work_m: vec![0.0; m],
            setup_seconds: 0.0,
            last_status: None,
            iters: 0,
            rho_updates: 0,
            factorisations: 0,
            next_rho_check: settings.adaptive_rho_interval,
            rho_interval: settings.adaptive_rho_interval,
            last_rho_direction: 0.0,
            policy: None,
        };
        w.setup_seconds = start.elapsed().as_secs_f64();
        if !defer {
            w.factor()?;
        }
        Ok(w)
    }

    /// Iterates from the current point until [`Self::check`] stops, consulting the policy at
    /// the start first when the settings ask for it; `start` is when the solve began.
    fn run(&mut self, start: Instant) -> Result<QpSolution> {
        if let Some(policy) = self.policy.filter(|_| self.settings.policy_at_start) {
            self.consult_at_start(policy)?;
        } else if !self.kkt.is_factored() {
            self.factor()?;
        }
        let status = loop {
            self.step();
            if let Some(status) = self.check(start.elapsed().as_secs_f64()) {
                break status;
            }
        };
        self.last_status = Some(status);
        let mut solution = self.solution(status);
        solution.elapsed = start.elapsed().as_secs_f64();
        solution.setup_elapsed = self.setup_seconds;
        Ok(solution)
    }

    /// Moves to `qp`, which must have this workspace's P and A (OSQP's update of q, l and u):
    /// the new vectors are scaled with the equilibration already computed, the KKT matrix
    /// keeps its analysis, its factor and ρ, the iterate restarts at zero (or stays, with
    /// `warm_start_sequence`) and the counters and ρ schedule restart. An error, with nothing
    /// changed, when P or A differ; an error from the refactorisation a row that changed kind
    /// needs leaves the workspace without a factor (the next solve refactors first).
    pub fn reload(&mut self, qp: &'a QpProblem) -> Result<()> {
        let start = Instant::now();
        if qp.p() != self.qp.p() || qp.a() != self.qp.a() {
            return Err(Error::invalid(
                "ADMM update: the new QP's P or A differs from the analysed one (only q, l \
                 and u may change; set up a new solve instead)",
            ));
        }
        self.iters = 0;
        self.rho_updates = 0;
        self.factorisations = 0;
        self.next_rho_check = self.settings.adaptive_rho_interval;
        self.rho_interval = self.settings.adaptive_rho_interval;
        self.last_rho_direction = 0.0;
        // The scaling is kept, so the previous scaled iterate is a start for this QP as is,
        // unless that solve ended on a certificate (an iterate running off to infinity) or a
        // numerical error: then, as OSQP does without a solution, from zero.
        let warm = self.settings.warm_start_sequence
            && matches!(
                self.last_status,
                Some(QpStatus::Solved | QpStatus::MaxIterations | QpStatus::MaxTime)
            )
            && self
                .y
                .iter()
                .chain(&self.z)
                .chain(&self.lambda)
                .all(|v| v.is_finite());
        if !warm {
            self.y.fill(0.0);
            self.z.fill(0.0);
            self.lambda.fill(0.0);
        }
        self.delta_y.fill(0.0);
        self.delta_lambda.fill(0.0);
        let d = &mut self.data;
        for (j, (dst, &q)) in d.q.iter_mut().zip(qp.q()).enumerate() {
            *dst = d.c * d.d[j] * q;
        }
        let mut kinds_changed = false;
        for i in 0..qp.m() {
            let before = row_kind(d.l[i], d.u[i]);
            d.l[i] = d.e[i] * qp.l()[i];
            d.u[i] = d.e[i] * qp.u()[i];
            kinds_changed |= row_kind(d.l[i], d.u[i]) != before;
            if warm {
                // A kept z moves into the new bounds (as the first step's projection would).
                self.z[i] = self.z[i].clamp(d.l[i], d.u[i]);
            }
        }
        self.qp = qp;
        self.setup_seconds = start.elapsed().as_secs_f64();
        if self.policy.is_some() && self.settings.policy_at_start {
            // The policy starts from what a fresh solve shows it (the initial base ρ); its
            // start consultation refactors only if its ρ differs from the factor's, which a
            // row that changed kind makes it do.
            self.rho = self.settings.rho.clamp(RHO_MIN, RHO_MAX);
            self.fresh_start_features = true;
        } else if kinds_changed {
            // OSQP's rule keeps its ρ, but a row that changed kind needs its share of it.
            self.set_base_rho(self.rho)?;
        }
        Ok(())
    }

    /// The kind of every constraint row (scaling does not change kinds).
    pub fn constraint_kinds(&self) -> Vec<RowKind> {
        (0..self.qp.m())
            .map(|i| row_kind(self.data.l[i], self.data.u[i]))
            .collect()
    }

    /// Starts from (y, λ) in the original units instead of zero; z = Π_[l,u](Ay).
    pub fn warm_start(&mut self, y: &[f64], lambda: &[f64]) -> Result<()> {
        let (n, m) = (self.qp.n(), self.qp.m());
        if y.len() != n || lambda.len() != m {
            return Err(Error::invalid(format!(
                "ADMM warm start has {} variables and {} multipliers, the QP has {n} and {m}",
                y.len(),
                lambda.len()
            )));
        }
        if !y.iter().chain(lambda).all(|v| v.is_finite()) {
            return Err(Error::invalid(
                "ADMM warm start contains NaN or infinite values",
            ));
        }
        let d = &self.data;
        for j in 0..n {
            self.y[j] = y[j] / d.d[j];
        }
        for i in 0..m {
            self.lambda[i] = d.c * lambda[i] / d.e[i];
        }
        d.a.mul_vec(&self.y, &mut self.ay);
        for i in 0..m {
            self.z[i] = self.ay[i].clamp(d.l[i], d.u[i]);
        }
        Ok(())
    }

    /// Whether the KKT system is solved in its sparse quasi-definite form (else reduced).
    pub fn kkt_is_sparse(&self) -> bool {
        self.kkt.is_sparse()
    }

    /// Whether the sparse form's factor is supernodal (dense blocks; else simplicial).
    pub fn kkt_is_supernodal(&self) -> bool {
        self.kkt.is_supernodal()
    }

    /// The sparse form's ordering and the entries its factor stores: `(true, k)` when the
    /// certified ascending-degree ordering replaced AMD (`KktOrdering::Auto`), `(false, k)`
    /// under AMD; `None` in the reduced form.
    pub fn kkt_ordering(&self) -> Option<(bool, usize)> {
        self.kkt.ordering()
    }

    /// Iterations taken since the start (or the last [`Self::reload`]).
    pub fn iterations(&self) -> usize {
        self.iters
    }

    /// The per-constraint step sizes ρ (scaled units).
    pub fn rho_vector(&self) -> &[f64] {
        &self.rho_vec
    }

    /// Sets ρ per constraint (clamped to [1e-6, 1e6]) and refactors the KKT matrix: the hook
    /// for learned step-size policies (RLQP, tutorial §6.4.5).
    pub fn set_rho_vector(&mut self, rho: &[f64]) -> Result<()> {
        if rho.len() != self.rho_vec.len() {
            return Err(Error::invalid(format!(
                "ρ has {} entries, the QP has {} constraints",
                rho.len(),
                self.rho_vec.len()
            )));
        }
        if !rho.iter().all(|r| r.is_finite() && *r > 0.0) {
            return Err(Error::invalid("every ρ must be finite and > 0"));
        }
        for (dst, r) in self.rho_vec.iter_mut().zip(rho) {
            *dst = r.clamp(RHO_MIN, RHO_MAX);
        }
        self.factor()
    }

    /// Lets `policy` set ρ before the first iteration, from the starting point's features (at
    /// zero: the bounds, through the slack and equality features), keeping the base ρ (there
    /// is no residual balance to estimate yet).
    pub fn consult_at_start(&mut self, policy: &dyn RhoPolicy) -> Result<()> {
        self.residuals();
        let (moved, changed) = self.apply_policy(policy, self.rho, true)?;
        self.fresh_start_features = false;
        if changed {
            self.rho_updates += 1;
        }
        if !moved && !self.kkt.is_factored() {
            self.factor()?;
        }
        Ok(())
    }

    /// Uses `policy` for ρ from now on (RLQP); `None` restores OSQP's rule.
    pub fn set_policy(&mut self, policy: Option<&'a dyn RhoPolicy>) {
        self.policy = policy;
    }

    /// Sets the base ρ: free rows get 1e-6, equality rows 1e3·ρ, the others ρ.
    fn set_base_rho(&mut self, rho: f64) -> Result<()> {
        self.rho = rho.clamp(RHO_MIN, RHO_MAX);
        for i in 0..self.rho_vec.len() {
            self.rho_vec[i] = base_rho(&self.data, i, self.rho);
        }
        self.factor()
    }

    /// The [`RHO_FEATURES`] features of every constraint (row-major), given OSQP's estimate
    /// `estimate`; needs the products of a fresh [`Self::residuals`] call.
    pub fn rho_features(&self, estimate: f64) -> Vec<f64> {
        let d = &self.data;
        let m = self.qp.m();
        let ratio = (estimate / self.rho).log10() / 3.0;
        let progress = (self.iters.max(1) as f64).log10() / 4.0;
        let mut f = Vec::with_capacity(m * RHO_FEATURES);
        for i in 0..m {
            let (z, l, u) = (self.z[i], d.l[i], d.u[i]);
            let rho_i = match self.fresh_start_features {
                true => base_rho(d, i, self.rho),
                false => self.rho_vec[i],
            };
            let slack = (z - l).min(u - z).min(1e4);
            let equality = f64::from(u8::from(row_kind(l, u) == RowKind::Equality));
            f.extend_from_slice(&[
                f64::from((rho_i as f32).log10() / 3.0),
                slog(self.ay[i] - z),
                slog(self.lambda[i]),
                slog(slack),
                slog(self.ay[i]),
                ratio,
                equality,
                progress,
            ]);
        }
        f
    }

    /// The policy's ρ at an adaptation point; refactors (and changes ρ) only when some ρᵢ
    /// moves by more than `adaptive_rho_tolerance`, as OSQP's rule does. Returns whether it
    /// refactored, and whether the consultation counts as a change of ρ: the same, except at
    /// the start (`at_start`), where it counts when the policy's ρ differs from the base ρ a
    /// fresh solve starts from, even if the factor (kept from the previous QP of a sequence)
    /// already holds it.
    fn apply_policy(
        &mut self,
        policy: &dyn RhoPolicy,
        estimate: f64,
        at_start: bool,
    ) -> Result<(bool, bool)> {
        let m = self.qp.m();
        let features = self.rho_features(estimate);
        let delta = policy.adjust(&features, m);
        if delta.len() != m {
            return Err(Error::invalid(format!(
                "the ρ policy returned {} values for {m} constraints",
                delta.len()
            )));
        }
        let proposed: Vec<f64> = (0..m)
            .map(|i| {
                let di = if delta[i].is_finite() {
                    delta[i].clamp(-3.0, 3.0)
                } else {
                    0.0
                };
                (base_rho(&self.data, i, estimate) * (di * std::f64::consts::LN_10).exp())
                    .clamp(RHO_MIN, RHO_MAX)
            })
            .collect();
        self.rho = estimate;
        let tol = self.settings.adaptive_rho_tolerance;
        let far = |a: f64, b: f64| (a / b).max(b / a) > tol;
        let moved = proposed.iter().zip(&self.rho_vec).any(|(&a, &b)| far(a, b));
        let changed = match at_start {
            true => proposed
                .iter()
                .enumerate()
                .any(|(i, &a)| far(a, base_rho(&self.data, i, estimate))),
            false => moved,
        };
        if moved {
            self.rho_vec.copy_from_slice(&proposed);
            self.factor()?;
        }
        Ok((moved, changed))
    }

    /// A scheduled consultation of `policy` (after the start): ρ changes when the policy
    /// moves it far enough, and the next consultation is scheduled.
    fn consult_policy(&mut self, policy: &dyn RhoPolicy) -> Result<()> {
        if self
            .settings
            .policy_max_changes
            .is_some_and(|cap| self.rho_updates >= cap)
        {
            // The policy has spent its changes: ρ stays as it is.
            self.next_rho_check = usize::MAX;
            return Ok(());
        }
        let estimate = self.rho_estimate();
        if self.apply_policy(policy, estimate, false)?.0 {
            self.rho_updates += 1;
        }
        // A change refactors the KKT matrix and a consultation evaluates the policy on every
        // constraint, so by default the next one waits twice as long: O(log N) consultations
        // and factorisations per solve.
        if self.settings.policy_backoff {
            self.rho_interval *= 2;
        }
        self.next_rho_check = self.iters + self.rho_interval;
        Ok(())
    }

    fn factor(&mut self) -> Result<()> {
        self.factorisations += 1;
        self.kkt.set_rho(&self.data.a, &self.rho_vec)
    }

    /// One ADMM iteration (eq. 58–59 with over-relaxation).
    pub fn step(&mut self) {
        let (n, m) = (self.qp.n(), self.qp.m());
        let alpha = self.settings.alpha;
        let d = &self.data;
        self.kkt.solve(
            &d.a,
            &d.q,
            &self.rho_vec,
            (&self.y, &self.z, &self.lambda),
            &mut self.rhs,
            &mut self.z_tilde,
        );
        for j in 0..n {
            let next = alpha * self.rhs[j] + (1.0 - alpha) * self.y[j];
            self.delta_y[j] = next - self.y[j];
            self.y[j] = next;
        }
        for i in 0..m {
            let relaxed = alpha * self.z_tilde[i] + (1.0 - alpha) * self.z[i];
            let z = (relaxed + self.lambda[i] / self.rho_vec[i]).clamp(d.l[i], d.u[i]);
            let dl = self.rho_vec[i] * (relaxed - z);
            self.delta_lambda[i] = dl;
            self.lambda[i] += dl;
            self.z[i] = z;
        }
        self.iters += 1;
    }

    /// Ay, Py and Aᵀλ at the current iterate, then the unscaled residuals and tolerances.
    fn residuals(&mut self) -> Residuals {
        let (n, m) = (self.qp.n(), self.qp.m());
        let d = &self.data;
        d.a.mul_vec(&self.y, &mut self.ay);
        d.p.mul_vec(&self.y, &mut self.py);
        d.a.mul_transpose_vec(&self.lambda, &mut self.at_lambda);
        let (mut primal, mut ay_norm, mut z_norm) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..m {
            let e = d.e[i];
            primal = primal.max(((self.ay[i] - self.z[i]) / e).abs());
            ay_norm = ay_norm.max((self.ay[i] / e).abs());
            z_norm = z_norm.max((self.z[i] / e).abs());
        }
        let (mut dual, mut py_norm, mut atl_norm, mut q_norm) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for j in 0..n {
            let s = 1.0 / (d.c * d.d[j]);
            dual = dual.max(((self.py[j] + d.q[j] + self.at_lambda[j]) * s).abs());
            py_norm = py_norm.max((self.py[j] * s).abs());
            atl_norm = atl_norm.max((self.at_lambda[j] * s).abs());
            q_norm = q_norm.max((d.q[j] * s).abs());
        }
        let (ea, er) = (self.settings.eps_abs, self.settings.eps_rel);
        Residuals {
            primal,
            dual,
            eps_primal: ea + er * ay_norm.max(z_norm),
            eps_dual: ea + er * py_norm.max(atl_norm).max(q_norm),
        }
    }

    /// The current (primal, dual) residuals in original units.
    pub fn current_residuals(&mut self) -> (f64, f64) {
        let r = self.residuals();
        (r.primal, r.dual)
    }

    /// The new base ρ from the balance of the scaled residuals (Stellato et al. 2020, §5.2).
    fn rho_estimate(&self) -> f64 {
        let (n, m) = (self.qp.n(), self.qp.m());
        let d = &self.data;
        let (mut primal, mut primal_norm) = (0.0f64, 0.0f64);
        for i in 0..m {
            primal = primal.max((self.ay[i] - self.z[i]).abs());
            primal_norm = primal_norm.max(self.ay[i].abs()).max(self.z[i].abs());
        }
        let (mut dual, mut dual_norm) = (0.0f64, 0.0f64);
        for j in 0..n {
            dual = dual.max((self.py[j] + d.q[j] + self.at_lambda[j]).abs());
            dual_norm = dual_norm
                .max(self.py[j].abs())
                .max(self.at_lambda[j].abs())
                .max(d.q[j].abs());
        }
        let primal = primal / (primal_norm + DIVISION_TOL);
        let dual = dual / (dual_norm + DIVISION_TOL);
        (self.rho * (primal / (dual + DIVISION_TOL)).sqrt()).clamp(RHO_MIN, RHO_MAX)
    }

    fn primal_infeasible(&mut self) -> bool {
        let d = &self.data;
        let m = self.qp.m();
        // Project δλ onto the polar of the recession cone of [l, u].
        for i in 0..m {
            let mut v = self.delta_lambda[i];
            if d.u[i] == f64::INFINITY {
                v = v.min(0.0);
            }
            if d.l[i] == f64::NEG_INFINITY {
                v = v.max(0.0);
            }
            self.work_m[i] = v;
        }
        let norm = (0..m).fold(0.0f64, |a, i| a.max((d.e[i] * self.work_m[i]).abs()));
        if norm <= DIVISION_TOL {
            return false;
        }
        let eps = self.settings.eps_primal_infeasible * norm;
        let support: f64 = (0..m)
            .map(|i| {
                let v = self.work_m[i];
                if v > 0.0 {
                    d.u[i] * v
                } else if v < 0.0 {
                    d.l[i] * v
                } else {
                    0.0
                }
            })
            .sum();
        if support >= -eps {
            return false;
        }
        d.a.mul_transpose_vec(&self.work_m, &mut self.work_n);
        (0..self.qp.n()).all(|j| (self.work_n[j] / d.d[j]).abs() <= eps)
    }

    fn dual_infeasible(&mut self) -> bool {
        let d = &self.data;
        let (n, m) = (self.qp.n(), self.qp.m());
        let norm = (0..n).fold(0.0f64, |a, j| a.max((d.d[j] * self.delta_y[j]).abs()));
        if norm <= DIVISION_TOL {
            return false;
        }
        let eps = self.settings.eps_dual_infeasible * norm;
        let q_dot: f64 = (0..n).map(|j| d.q[j] * self.delta_y[j]).sum();
        if q_dot >= -d.c * eps {
            return false;
        }
        d.p.mul_vec(&self.delta_y, &mut self.work_n);
        if (0..n).any(|j| (self.work_n[j] / d.d[j]).abs() > d.c * eps) {
            return false;
        }
        d.a.mul_vec(&self.delta_y, &mut self.work_m);
        (0..m).all(|i| {
            let v = self.work_m[i] / d.e[i];
            (d.u[i] == f64::INFINITY || v <= eps) && (d.l[i] == f64::NEG_INFINITY || v >= -eps)
        })
    }

    /// After a step: the status if the solve should stop now (converged, infeasible, out of
    /// budget, non-finite), adapting ρ on schedule otherwise.
    pub fn check(&mut self, elapsed: f64) -> Option<QpStatus> {
        let at_check = self.iters == 1 || self.iters.is_multiple_of(self.settings.check_every);
        let at_rho = self.settings.adaptive_rho && self.iters >= self.next_rho_check;
        let last = self.iters >= self.settings.max_iters;
        if at_check || at_rho || last {
            let r = self.residuals();
            if !(r.primal.is_finite() && r.dual.is_finite()) {
                return Some(QpStatus::NumericalError);
            }
            if r.primal <= r.eps_primal && r.dual <= r.eps_dual {
                return Some(QpStatus::Solved);
            }
            if self.primal_infeasible() {
                return Some(QpStatus::PrimalInfeasible);
            }
            if self.dual_infeasible() {
                return Some(QpStatus::DualInfeasible);
            }
            if let (true, Some(policy)) = (at_rho, self.policy) {
                if self.consult_policy(policy).is_err() {
                    return Some(QpStatus::NumericalError);
                }
            } else if at_rho {
                let estimate = self.rho_estimate();
                let tol = self.settings.adaptive_rho_tolerance;
                let direction = (estimate / self.rho).ln().signum();
                if estimate > self.rho * tol || estimate < self.rho / tol {
                    // A failed refactorisation leaves no usable factor.
                    if self.set_base_rho(estimate).is_err() {
                        return Some(QpStatus::NumericalError);
                    }
                    self.rho_updates += 1;
                    if direction * self.last_rho_direction < 0.0 {
                        self.rho_interval *= 2;
                    }
                    self.last_rho_direction = direction;
                }
                self.next_rho_check = self.iters + self.rho_interval;
            }
        }
        if last {
            return Some(QpStatus::MaxIterations);
        }
        if self.settings.time_limit.is_some_and(|t| elapsed >= t) {
            return Some(QpStatus::MaxTime);
        }
        None
    }

    /// The iterate in original units, with residuals, ended by `status`.
    pub fn solution(&mut self, status: QpStatus) -> QpSolution {
        let r = self.residuals();
        let d = &self.data;
        let y: Vec<f64> = (0..self.qp.n()).map(|j| d.d[j] * self.y[j]).collect();
        let lambda = (0..self.qp.m())
            .map(|i| d.e[i] * self.lambda[i] / d.c)
            .collect();
        let normalised = |v: Vec<f64>| {
            let norm = inf_norm(&v).max(DIVISION_TOL);
            v.into_iter().map(|x| x / norm).collect()
        };
        let certificate = match status {
            QpStatus::PrimalInfeasible => Some(normalised(
                (0..self.qp.m()).map(|i| d.e[i] * self.work_m[i]).collect(),
            )),
            QpStatus::DualInfeasible => Some(normalised(
                (0..self.qp.n()).map(|j| d.d[j] * self.delta_y[j]).collect(),
            )),
            _ => None,
        };
        QpSolution {
            status,
            objective: self.qp.objective(&y),
            y,
            lambda,
            primal_residual: r.primal,
            dual_residual: r.dual,
            iters: self.iters,
            rho_updates: self.rho_updates,
            factorisations: self.factorisations,
            elapsed: 0.0,
            setup_elapsed: 0.0,
            certificate,
        }
    }
}
