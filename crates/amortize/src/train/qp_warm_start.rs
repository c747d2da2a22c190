//! A fully-amortized warm start for ADMM on a parametric QP family (tutorial §6.4.5, RLQP's
//! companion; §3 for fully-amortized models). The members of a family share P and A
//! ([`QpFamily`]); what changes between them is some of the data (q, l, u): the initial state
//! x₀ of an MPC system, the observations b of a lasso or Huber fit, the returns μ of a
//! portfolio. An MLP maps exactly those entries (the coordinates of (q, l, u) that differ
//! between the training members) to a prediction of the member's primal-dual solution
//! (y*, λ*), trained by regression (tutorial eq. 9) on labels from ADMM run to a tight
//! tolerance. ADMM then starts from the prediction
//! ([`crate::solver::qp::Admm::solve_with_policy`] with `warm`), so its termination
//! criterion still decides when the answer is accepted: a poor prediction costs iterations,
//! never correctness.
//!
//! Inputs and labels are standardised per coordinate (mean and standard deviation over the
//! training set) and the loss is the mean squared error of the standardised prediction.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::checkpoint::ModelFiles;
use crate::model::{Activation, Mlp, MlpConfig, Model};
use crate::optim::Adam;
use crate::solver::qp::{Admm, AdmmSettings, QpClass, QpFamily, QpProblem, QpStatus};
use crate::{Error, Result};

/// Settings of the warm-start model and its training; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QpWarmStartConfig {
    /// The family's class (default control: one MPC system, its initial state x₀ varying;
    /// [`QpFamily`] lists every class's parameter). The family is drawn from `seed`.
    pub class: QpClass,
    /// The family's size parameter n ≥ 2 (default 10: n_x = 10 states for control). Files
    /// written before other classes were supported call it `states`.
    #[serde(alias = "states")]
    pub size: usize,
    /// Training members, each labelled once by ADMM (default 2,000).
    pub train_instances: usize,
    /// Adam steps (default 3,000).
    pub steps: usize,
    /// Batch size (default 64).
    pub batch: usize,
    /// Adam's rate, decayed by a cosine to 1% (default 1e-3).
    pub learning_rate: f64,
    /// Hidden widths of the MLP (default [256, 256]).
    pub hidden: Vec<usize>,
    /// Tolerance (eps_abs = eps_rel) of the labelling solves (default 1e-6).
    pub label_eps: f64,
    /// Held-out members for the comparison with cold starts (default 200).
    pub held_out: usize,
    /// Seed of the family, the data and θ (default 0).
    pub seed: u64,
}

impl Default for QpWarmStartConfig {
    fn default() -> Self {
        QpWarmStartConfig {
            class: QpClass::Control,
            size: 10,
            train_instances: 2000,
            steps: 3000,
            batch: 64,
            learning_rate: 1e-3,
            hidden: vec![256, 256],
            label_eps: 1e-6,
            held_out: 200,
            seed: 0,
        }
    }
}

impl QpWarmStartConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::invalid(format!("warm start: {m}")));
        if self.size < 2 {
            return bad("size must be at least 2");
        }
        if self.train_instances < 2 || self.steps == 0 || self.batch == 0 || self.held_out == 0 {
            return bad("train_instances must be at least 2, steps, batch and held_out at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate must be finite and > 0");
        }
        if !(self.label_eps.is_finite() && self.label_eps > 0.0) {
            return bad("label_eps must be finite and > 0");
        }
        if self.hidden.contains(&0) {
            return bad("hidden widths must be at least 1");
        }
        Ok(())
    }

    /// The family the model is for (drawn from `seed`; for control the same MPC system at
    /// every call).
    pub fn family(&self) -> Result<QpFamily> {
        self.class.family(
            self.size,
            &mut StdRng::seed_from_u64(self.seed ^ 0x0003_C017),
        )
    }

    /// `held_out` members of `family` that training never sees.
    pub fn held_out_instances(&self, family: &QpFamily) -> Result<Vec<QpProblem>> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x0004_E1D0_u64);
        (0..self.held_out)
            .map(|_| family.instance(&mut rng))
            .collect()
    }
}

/// The trained warm-start model: the varying data of a member of one [`QpFamily`] ↦ (ŷ, λ̂).
pub struct QpWarmStart {
    config: QpWarmStartConfig,
    mlp: Mlp,
    /// The coordinates of (q, l, u), concatenated, that the model reads.
    inputs: Vec<usize>,
    /// Per-input mean and standard deviation.
    input_mean: Vec<f32>,
    input_std: Vec<f32>,
    /// Per-coordinate label mean and standard deviation, (y, λ) concatenated.
    mean: Vec<f32>,
    std: Vec<f32>,
    variables: usize,
    constraints: usize,
}

/// One record of warm-start training.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QpWarmStartRecord {
    /// Steps done.
    pub step: usize,
    /// Mean squared error of the standardised prediction on this step's batch.
    pub loss: f64,
}

/// (q, l, u) of `qp`, concatenated: the data a family's members may differ in.
fn data(qp: &QpProblem) -> impl Iterator<Item = f64> + '_ {
    qp.q().iter().chain(qp.l()).chain(qp.u()).copied()
}

/// Entry `k` of (q, l, u), concatenated, without collecting them.
fn data_entry(qp: &QpProblem, k: usize) -> f64 {
    let (n, m) = (qp.n(), qp.m());
    match k {
        k if k < n => qp.q()[k],
        k if k < n + m => qp.l()[k - n],
        k => qp.u()[k - n - m],
    }
}

/// The coordinates of (q, l, u) in which some member of `qps` differs from the first; an error
/// when none does.
fn varying_inputs(qps: &[QpProblem]) -> Result<Vec<usize>> {
    let Some(first) = qps.first() else {
        return Err(Error::invalid("warm start: no training members"));
    };
    let first: Vec<f64> = data(first).collect();
    let mut varies = vec![false; first.len()];
    for qp in &qps[1..] {
        for (k, v) in data(qp).enumerate() {
            varies[k] |= v != first[k];
        }
    }
    let inputs: Vec<usize> = (0..first.len()).filter(|&k| varies[k]).collect();
    if inputs.is_empty() {
        return Err(Error::invalid(
            "warm start: the family's members do not differ in q, l or u",
        ));
    }
    Ok(inputs)
}

/// The entries `inputs` of (q, l, u) of every QP; an error when one is infinite (a bound that
/// comes and goes between members is not a number the model can read).
fn read_contexts(qps: &[QpProblem], inputs: &[usize]) -> Result<Vec<Vec<f64>>> {
    qps.iter()
        .map(|qp| {
            let context: Vec<f64> = inputs.iter().map(|&k| data_entry(qp, k)).collect();
            if context.iter().all(|v| v.is_finite()) {
                Ok(context)
            } else {
                Err(Error::invalid(
                    "warm start: a bound the model reads (an entry of (q, l, u) that varies in \
                     the family) is infinite in a QP",
                ))
            }
        })
        .collect()
}

/// Per-coordinate mean and standard deviation (at least 1e-6) of `rows` (none: empty).
fn moments(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let dim = rows.first().map_or(0, Vec::len);
    let count = rows.len() as f64;
    let mut mean = vec![0.0f64; dim];
    for t in rows {
        mean.iter_mut().zip(t).for_each(|(m, v)| *m += v / count);
    }
    let mut var = vec![0.0f64; dim];
    for t in rows {
        var.iter_mut()
            .zip(t.iter().zip(&mean))
            .for_each(|(s, (v, m))| *s += (v - m).powi(2) / count);
    }
    let std = var.iter().map(|v| v.sqrt().max(1e-6)).collect();
    (mean, std)
}

/// `rows` standardised by `mean` and `std`.
fn standardise(rows: &[Vec<f64>], mean: &[f64], std: &[f64]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|t| {
            t.iter()
                .zip(mean.iter().zip(std))
                .map(|(v, (m, s))| (v - m) / s)
                .collect()
        })
        .collect()
}

/// Labels (y*, λ*) of every member, concatenated, by ADMM at `eps`.
fn labels(qps: &[QpProblem], eps: f64) -> Result<Vec<Vec<f64>>> {
    let admm = Admm::new(AdmmSettings {
        max_iters: 100_000,
        ..AdmmSettings::accurate(eps)
    })?;
    qps.iter()
        .map(|qp| {
            let s = admm.solve(qp, None)?;
            if s.status != QpStatus::Solved {
                return Err(Error::invalid(format!(
                    "warm start: a labelling solve ended {:?}",
                    s.status
                )));
            }
            Ok(s.y.into_iter().chain(s.lambda).collect())
        })
        .collect()
}

/// The MLP (standardised inputs ↦ standardised (y, λ)), θ drawn from `rng`.
fn network(
    cfg: &QpWarmStartConfig,
    inputs: usize,
    outputs: usize,
    rng: &mut StdRng,
) -> Result<Mlp> {
    Mlp::new(
        MlpConfig {
            hidden: cfg.hidden.clone(),
            activation: Activation::Relu,
            project_output: false,
        },
        inputs,
        outputs,
        rng,
        &Device::Cpu,
    )
}

fn rows_tensor(rows: &[&[f64]], device: &Device) -> Result<Tensor> {
    let cols = rows.first().map_or(0, |r| r.len());
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.iter().map(|v| *v as f32))
        .collect();
    Ok(Tensor::from_vec(flat, (rows.len(), cols), device)?)
}

impl QpWarmStart {
    /// Draws `cfg.train_instances` members of `cfg.family()`, labels them and fits the MLP;
    /// `observe` sees every step.
    pub fn train(
        cfg: &QpWarmStartConfig,
        mut observe: impl FnMut(&QpWarmStartRecord),
    ) -> Result<(Self, Vec<QpWarmStartRecord>)> {
        cfg.validate()?;
        let family = cfg.family()?;
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x57A2);
        let qps: Vec<QpProblem> = (0..cfg.train_instances)
            .map(|_| family.instance(&mut rng))
            .collect::<Result<_>>()?;
        let inputs = varying_inputs(&qps)?;
        let contexts = read_contexts(&qps, &inputs)?;
        let (input_mean, input_std) = moments(&contexts);
        let contexts = standardise(&contexts, &input_mean, &input_std);
        let targets = labels(&qps, cfg.label_eps)?;
        let (mean, std) = moments(&targets);
        let standardised = standardise(&targets, &mean, &std);
        let device = Device::Cpu;
        let mlp = network(cfg, inputs.len(), mean.len(), &mut rng)?;
        let vars: Vec<candle_core::Var> = mlp.params().vars().cloned().collect();
        let adam = Adam::default();
        let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let mut state = adam.init(&tensors)?;
        let mut records = Vec::with_capacity(cfg.steps);
        for step in 0..cfg.steps {
            let idx: Vec<usize> = (0..cfg.batch)
                .map(|_| rng.random_range(0..qps.len()))
                .collect();
            let x = rows_tensor(
                &idx.iter()
                    .map(|&i| contexts[i].as_slice())
                    .collect::<Vec<_>>(),
                &device,
            )?;
            let target = rows_tensor(
                &idx.iter()
                    .map(|&i| standardised[i].as_slice())
                    .collect::<Vec<_>>(),
                &device,
            )?;
            let loss = (mlp.forward_raw(&x)? - target)?.sqr()?.mean_all()?;
            let grads = loss.backward()?;
            let g: Vec<Tensor> =
                vars.iter()
                    .map(|v| {
                        grads.get(v.as_tensor()).map(Tensor::detach).ok_or_else(|| {
                            Error::invalid("warm start: a parameter has no gradient")
                        })
                    })
                    .collect::<Result<_>>()?;
            let progress = step as f64 / cfg.steps as f64;
            let rate = cfg.learning_rate
                * (0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
            let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
            let updated = adam.update(rate, &tensors, &g, &mut state)?;
            for (v, t) in vars.iter().zip(updated) {
                v.set(&t.detach())?;
            }
            let record = QpWarmStartRecord {
                step: step + 1,
                loss: f64::from(loss.to_scalar::<f32>()?),
            };
            observe(&record);
            records.push(record);
        }
        let to_f32 = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<f32>>();
        let model = QpWarmStart {
            config: cfg.clone(),
            mlp,
            inputs,
            input_mean: to_f32(&input_mean),
            input_std: to_f32(&input_std),
            mean: to_f32(&mean),
            std: to_f32(&std),
            variables: family.base().n(),
            constraints: family.base().m(),
        };
        Ok((model, records))
    }

    /// The settings the model was trained with (its family is `config().family()`).
    pub fn config(&self) -> &QpWarmStartConfig {
        &self.config
    }

    /// How many entries of (q, l, u) the model reads: those that differ between the
    /// family's training members.
    pub fn input_count(&self) -> usize {
        self.inputs.len()
    }

    /// The predicted (y, λ) of every QP, in its original units. The QPs must be members of
    /// the model's family (the same P and A); their sizes are checked, their matrices are not.
    pub fn predict(&self, qps: &[QpProblem]) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        let (n, m) = (self.variables, self.constraints);
        if let Some(bad) = qps.iter().find(|qp| (qp.n(), qp.m()) != (n, m)) {
            return Err(Error::invalid(format!(
                "warm start: a QP has {} variables and {} constraints, the model's family has \
                 {n} and {m}",
                bad.n(),
                bad.m()
            )));
        }
        if qps.is_empty() {
            return Ok(Vec::new());
        }
        let to_f64 = |v: &[f32]| v.iter().map(|x| f64::from(*x)).collect::<Vec<f64>>();
        let standardised = standardise(
            &read_contexts(qps, &self.inputs)?,
            &to_f64(&self.input_mean),
            &to_f64(&self.input_std),
        );
        let x = rows_tensor(
            &standardised.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            &Device::Cpu,
        )?;
        let out: Vec<Vec<f32>> = self.mlp.forward_raw(&x)?.to_dtype(DType::F32)?.to_vec2()?;
        Ok(out
            .into_iter()
            .map(|row| {
                let full: Vec<f64> = row
                    .iter()
                    .zip(self.mean.iter().zip(&self.std))
                    .map(|(v, (m, s))| f64::from(v * s + m))
                    .collect();
                let (y, lambda) = full.split_at(self.variables);
                (y.to_vec(), lambda.to_vec())
            })
            .collect())
    }

    /// Saves θ and the input and label statistics (`warm-start.safetensors`) and the
    /// settings with the inputs' positions (`warm-start.json`) into `dir`, both atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut map = self.mlp.params().to_map();
        let device = Device::Cpu;
        for (name, values) in [
            ("input.mean", &self.input_mean),
            ("input.std", &self.input_std),
            ("label.mean", &self.mean),
            ("label.std", &self.std),
        ] {
            map.insert(name.into(), Tensor::new(values.as_slice(), &device)?);
        }
        let meta = WarmStartMeta {
            format: WARM_START_FORMAT.into(),
            config: self.config.clone(),
            inputs: self.inputs.clone(),
        };
        ModelFiles::new(dir, "warm-start").save(&meta, &map)
    }

    /// Loads a model saved by [`QpWarmStart::save`], refusing a missing, corrupt or
    /// mismatched one with a message naming the problem.
    pub fn load(dir: &Path) -> Result<Self> {
        let files = ModelFiles::new(dir, "warm-start");
        let refuse = |reason: String| files.refuse(reason);
        let meta: WarmStartMeta =
            files.load_meta(WARM_START_FORMAT, |m: &WarmStartMeta| &m.format)?;
        meta.config
            .validate()
            .map_err(|e| refuse(format!("its settings are invalid: {e}")))?;
        let family = meta.config.family()?;
        let (variables, constraints) = (family.base().n(), family.base().m());
        let data_len = variables + 2 * constraints;
        // Training writes them increasing, each an entry of (q, l, u).
        let increasing = meta.inputs.windows(2).all(|w| w[0] < w[1]);
        if meta.inputs.is_empty() || !increasing || meta.inputs.iter().any(|&k| k >= data_len) {
            return Err(refuse(format!(
                "its inputs are not increasing positions among the family's {data_len} entries \
                 of (q, l, u)"
            )));
        }
        let outputs = variables + constraints;
        let mlp = network(
            &meta.config,
            meta.inputs.len(),
            outputs,
            &mut StdRng::seed_from_u64(0),
        )?;
        let mut tensors = files.load_tensors()?;
        let mut stat = |name: &str, dim: usize| -> Result<Vec<f32>> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| refuse(format!("'{name}' is missing")))?;
            let v: Vec<f32> = t.to_dtype(DType::F32)?.to_vec1()?;
            if v.len() != dim {
                return Err(refuse(format!(
                    "'{name}' has {} entries, the family needs {dim}",
                    v.len()
                )));
            }
            let usable = |x: &f32| x.is_finite() && (!name.ends_with(".std") || *x > 0.0);
            if !v.iter().all(usable) {
                return Err(refuse(format!(
                    "'{name}' has entries that are not finite (or a deviation not > 0)"
                )));
            }
            Ok(v)
        };
        let inputs = meta.inputs.len();
        let (input_mean, input_std) = (stat("input.mean", inputs)?, stat("input.std", inputs)?);
        let (mean, std) = (stat("label.mean", outputs)?, stat("label.std", outputs)?);
        files.fill(mlp.params(), &tensors, "model")?;
        Ok(QpWarmStart {
            config: meta.config,
            mlp,
            inputs: meta.inputs,
            input_mean,
            input_std,
            mean,
            std,
            variables,
            constraints,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmStartMeta {
    format: String,
    config: QpWarmStartConfig,
    /// The positions in (q, l, u) the model reads (absent in version 1: read as empty, so
    /// that the format check names the problem).
    #[serde(default)]
    inputs: Vec<usize>,
}

/// Version 2 reads any family's varying data; version 1 (MPC only, x₀ as input) is refused.
const WARM_START_FORMAT: &str = "amortize-qp-warm-start-2";
