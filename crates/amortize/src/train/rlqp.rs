//! Learning RLQP's step-size policy (tutorial §6.4.5, §4.3): ADMM is not differentiable in its
//! iteration count, so θ is learned from forward solves only, by the antithetic ES estimator of
//! the smoothed loss (eq. 15) and Adam.
//!
//! The loss of θ on a batch of QPs φ drawn from the classes and sizes of [`RlqpConfig`] is
//!
//! J(θ) = mean_φ ln(N_θ(φ) / N_OSQP(φ)),
//!
//! with N the ADMM iterations to OSQP's termination criterion (checked every iteration) and
//! N_OSQP those of OSQP's own adaptive ρ on the same QP: the RL reward "−1 per iteration until
//! solved", relative to the baseline so that QPs of every size count alike. An unsolved QP
//! counts as twice the iteration budget. With `refactor_cost` κ > 0, N counts
//! iterations + κ·(KKT factorisations) on both sides, a model of wall-clock: a policy that
//! changes ρ often saves iterations but pays a refactorisation each time.

use std::path::Path;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::checkpoint::ModelFiles;
use super::smoothing::es_gradient;
use crate::model::{RhoPolicyConfig, RhoPolicyNet};
use crate::optim::Adam;
use crate::solver::qp::{Admm, AdmmSettings, QpClass, QpProblem, QpStatus, RhoPolicy};
use crate::{Error, Result};

/// Settings of RLQP training; every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlqpConfig {
    /// QP classes drawn uniformly for each training QP (default random, equality, portfolio).
    pub classes: Vec<QpClass>,
    /// Sizes n drawn uniformly for each training QP (default [10, 20, 30]).
    pub sizes: Vec<usize>,
    /// ES updates (default 150).
    pub steps: usize,
    /// QPs per update, shared by all perturbations of that update (default 16).
    pub batch: usize,
    /// ES smoothing σ (default 0.1).
    pub sigma: f64,
    /// Antithetic pairs per update (default 8).
    pub samples: usize,
    /// Adam's rate (default 0.02).
    pub learning_rate: f64,
    /// Iterations between the policy's ρ updates (default 10; OSQP's rule uses 25).
    pub interval: usize,
    /// Double the interval after every consultation (default true; see
    /// `AdmmSettings::policy_backoff`).
    pub backoff: bool,
    /// Also consult the policy before the first iteration (default false; see
    /// `AdmmSettings::policy_at_start`).
    pub at_start: bool,
    /// Stop consulting the policy after this many changes of ρ (default none; see
    /// `AdmmSettings::policy_max_changes`).
    pub max_changes: Option<usize>,
    /// Iteration budget of every solve (default 4000).
    pub max_iters: usize,
    /// The loss counts every KKT factorisation as this many iterations (default 0: the RL
    /// reward "−1 per iteration"; a positive value makes the loss a wall-clock model).
    pub refactor_cost: f64,
    /// Threads solving a batch (default 2).
    pub threads: usize,
    /// The policy network (default [16, 16]).
    pub policy: RhoPolicyConfig,
    /// Seed of θ and of the training QPs (default 0).
    pub seed: u64,
}

impl Default for RlqpConfig {
    fn default() -> Self {
        RlqpConfig {
            classes: vec![QpClass::Random, QpClass::Equality, QpClass::Portfolio],
            sizes: vec![10, 20, 30],
            steps: 150,
            batch: 16,
            sigma: 0.1,
            samples: 8,
            learning_rate: 0.02,
            interval: 10,
            backoff: true,
            at_start: false,
            max_changes: None,
            max_iters: 4000,
            refactor_cost: 0.0,
            threads: 2,
            policy: RhoPolicyConfig::default(),
            seed: 0,
        }
    }
}

impl RlqpConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::invalid(format!("rlqp: {m}")));
        if self.classes.is_empty() || self.sizes.is_empty() || self.sizes.iter().any(|n| *n < 2) {
            return bad("classes and sizes must be non-empty and every size >= 2");
        }
        if self.batch == 0 || self.samples == 0 || self.threads == 0 || self.interval == 0 {
            return bad("batch, samples, threads and interval must be at least 1");
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !(positive(self.sigma) && positive(self.learning_rate)) {
            return bad("sigma and learning_rate must be finite and > 0");
        }
        if !(self.refactor_cost.is_finite() && self.refactor_cost >= 0.0) {
            return bad("refactor_cost must be finite and >= 0");
        }
        if self.max_changes == Some(0) {
            return bad("max_changes must be >= 1 (leave it out for no limit)");
        }
        if self.max_iters < 2 * self.interval {
            return bad("max_iters must be at least twice the interval");
        }
        Ok(())
    }

    /// OSQP's settings with termination checked every iteration and this budget: the
    /// baseline's.
    pub fn baseline_settings(&self) -> AdmmSettings {
        AdmmSettings {
            check_every: 1,
            max_iters: self.max_iters,
            ..AdmmSettings::default()
        }
    }

    /// The baseline's settings with the policy's schedule.
    pub fn policy_settings(&self) -> AdmmSettings {
        self.schedule().apply(self.baseline_settings())
    }

    /// When ADMM consults the policy: `interval`, `backoff`, `at_start`, `max_changes`.
    pub fn schedule(&self) -> RhoSchedule {
        RhoSchedule {
            interval: self.interval,
            backoff: self.backoff,
            at_start: self.at_start,
            max_changes: self.max_changes,
        }
    }

    /// `count` training QPs from `rng`.
    pub fn sample(&self, count: usize, rng: &mut StdRng) -> Result<Vec<QpProblem>> {
        (0..count)
            .map(|_| {
                let class = self.classes[rng.random_range(0..self.classes.len())];
                let n = self.sizes[rng.random_range(0..self.sizes.len())];
                class.generate(n, rng)
            })
            .collect()
    }
}

/// Solves every QP (split over `threads`) with `policy` (or OSQP's rule) and returns the
/// iterations, counting a solve that did not reach "solved" as twice the budget.
pub fn iterations(
    qps: &[QpProblem],
    settings: AdmmSettings,
    policy: Option<&dyn RhoPolicy>,
    threads: usize,
) -> Result<Vec<f64>> {
    solve_costs(qps, settings, policy, threads, 0.0)
}

/// [`iterations`] plus `refactor_cost` iterations' worth for every numeric factorisation of
/// the KKT matrix (the first included): a model of wall-clock in units of one iteration.
pub fn solve_costs(
    qps: &[QpProblem],
    settings: AdmmSettings,
    policy: Option<&dyn RhoPolicy>,
    threads: usize,
    refactor_cost: f64,
) -> Result<Vec<f64>> {
    Ok(Admm::new(settings)?
        .solve_batch_with_policy(qps, threads, policy)?
        .iter()
        .map(|s| {
            if s.status == QpStatus::Solved {
                s.iters as f64 + refactor_cost * s.factorisations as f64
            } else {
                2.0 * settings.max_iters as f64
            }
        })
        .collect())
}

/// One record of RLQP training.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RlqpRecord {
    /// Updates done.
    pub step: usize,
    /// J at the current θ on this step's batch (before the update).
    pub loss: f64,
    /// The geometric mean of N_OSQP / N_θ on this batch (> 1: fewer iterations than OSQP).
    pub speedup: f64,
}

/// Trains `policy` in place by ES on QPs drawn from `cfg`; `observe` sees every update.
pub fn train_rho_policy(
    policy: &RhoPolicyNet,
    cfg: &RlqpConfig,
    mut observe: impl FnMut(&RlqpRecord),
) -> Result<Vec<RlqpRecord>> {
    cfg.validate()?;
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x51_9F);
    let mut es_rng = StdRng::seed_from_u64(cfg.seed ^ 0xE5);
    let vars: Vec<candle_core::Var> = policy.params().vars().cloned().collect();
    let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let adam = Adam::default();
    let mut state = adam.init(&tensors)?;
    let mut records = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let qps = cfg.sample(cfg.batch, &mut rng)?;
        let cost = |settings, policy: Option<&dyn RhoPolicy>| {
            solve_costs(&qps, settings, policy, cfg.threads, cfg.refactor_cost)
        };
        let base = cost(cfg.baseline_settings(), None)?;
        let loss_of = |iters: &[f64]| -> f64 {
            iters
                .iter()
                .zip(&base)
                .map(|(n, b)| (n / b).ln())
                .sum::<f64>()
                / iters.len() as f64
        };
        let loss_at_theta = || -> Result<f64> {
            let frozen = policy.frozen()?;
            Ok(loss_of(&cost(cfg.policy_settings(), Some(&frozen))?))
        };
        let current = loss_at_theta()?;
        let (grads, _) = es_gradient(&vars, cfg.sigma, cfg.samples, &mut es_rng, loss_at_theta)?;
        let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let updated = adam.update(cfg.learning_rate, &tensors, &grads, &mut state)?;
        for (v, t) in vars.iter().zip(updated) {
            v.set(&t)?;
        }
        let record = RlqpRecord {
            step: step + 1,
            loss: current,
            speedup: (-current).exp(),
        };
        observe(&record);
        records.push(record);
    }
    Ok(records)
}

/// When ADMM consults a ρ policy, as it was trained ([`RlqpConfig::schedule`]); saved beside
/// θ so that a deployed policy runs as it learned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RhoSchedule {
    /// Iterations before the first consultation after the start.
    pub interval: usize,
    /// Double the interval after every consultation.
    pub backoff: bool,
    /// Consult before the first iteration.
    pub at_start: bool,
    /// Stop after this many changes of ρ.
    pub max_changes: Option<usize>,
}

impl RhoSchedule {
    /// `settings` with this schedule.
    pub fn apply(&self, settings: AdmmSettings) -> AdmmSettings {
        AdmmSettings {
            adaptive_rho_interval: self.interval,
            policy_backoff: self.backoff,
            policy_at_start: self.at_start,
            policy_max_changes: self.max_changes,
            ..settings
        }
    }
}

/// The JSON sidecar of a saved policy (`schedule` is absent in files written before it was
/// saved).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyMeta {
    format: String,
    policy: RhoPolicyConfig,
    #[serde(default)]
    schedule: Option<RhoSchedule>,
}

const POLICY_FORMAT: &str = "amortize-rho-policy-1";

/// Saves θ (`policy.safetensors`), its configuration and the schedule it was trained with
/// (`policy.json`) into `dir`, both written atomically.
pub fn save_policy(dir: &Path, policy: &RhoPolicyNet, schedule: RhoSchedule) -> Result<()> {
    let meta = PolicyMeta {
        format: POLICY_FORMAT.into(),
        policy: policy.config().clone(),
        schedule: Some(schedule),
    };
    ModelFiles::new(dir, "policy").save(&meta, &policy.params().to_map())
}

/// Loads a policy saved by [`save_policy`], refusing a missing, corrupt or mismatched one with
/// a message naming the problem.
pub fn load_policy(dir: &Path) -> Result<RhoPolicyNet> {
    Ok(load_policy_with_schedule(dir)?.0)
}

/// [`load_policy`] with the schedule saved beside it (`None` in files older than the
/// schedule).
pub fn load_policy_with_schedule(dir: &Path) -> Result<(RhoPolicyNet, Option<RhoSchedule>)> {
    let files = ModelFiles::new(dir, "policy");
    let meta: PolicyMeta = files.load_meta(POLICY_FORMAT, |m: &PolicyMeta| &m.format)?;
    let policy = RhoPolicyNet::new(meta.policy, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    files.fill(policy.params(), &files.load_tensors()?, "policy")?;
    Ok((policy, meta.schedule))
}
