//! A fully-amortized warm start for ADMM on a parametric QP family (tutorial §6.4.5, RLQP's
//! companion; §3 for fully-amortized models): an MLP maps the context x₀ of an MPC instance
//! ([`MpcFamily`]) to a prediction of its primal-dual solution (y*, λ*), trained by regression
//! (tutorial eq. 9) on labels from ADMM run to a tight tolerance. ADMM then starts from the
//! prediction ([`crate::solver::qp::Admm::solve_with_policy`] with `warm`), so its termination
//! criterion still decides when the answer is accepted: a poor prediction costs iterations,
//! never correctness.
//!
//! Labels are standardised per coordinate (mean and standard deviation over the training set)
//! and the loss is the mean squared error of the standardised prediction.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::checkpoint::ModelFiles;
use crate::model::{Activation, Mlp, MlpConfig, Model};
use crate::optim::Adam;
use crate::solver::qp::{Admm, AdmmSettings, MpcFamily, QpStatus};
use crate::{Error, Result};

/// Settings of the warm-start model and its training; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QpWarmStartConfig {
    /// States n_x of the MPC family (default 10; the family is drawn from `seed`).
    pub states: usize,
    /// Training instances, each labelled once by ADMM (default 2,000).
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
    /// Held-out initial states for the comparison with cold starts (default 200).
    pub held_out: usize,
    /// Seed of the family, the data and θ (default 0).
    pub seed: u64,
}

impl Default for QpWarmStartConfig {
    fn default() -> Self {
        QpWarmStartConfig {
            states: 10,
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
        if self.states < 2 {
            return bad("states must be at least 2");
        }
        if self.train_instances == 0 || self.steps == 0 || self.batch == 0 || self.held_out == 0 {
            return bad("train_instances, steps, batch and held_out must be at least 1");
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

    /// The MPC family the model is for (drawn from `seed`).
    pub fn family(&self) -> Result<MpcFamily> {
        MpcFamily::random(
            self.states,
            &mut StdRng::seed_from_u64(self.seed ^ 0x0003_C017),
        )
    }

    /// `held_out` initial states that training never sees.
    pub fn held_out_states(&self, family: &MpcFamily) -> Vec<Vec<f64>> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x0004_E1D0_u64);
        (0..self.held_out)
            .map(|_| family.sample_initial_state(&mut rng))
            .collect()
    }
}

/// The trained warm-start model: x₀ ↦ (ŷ, λ̂) for one [`MpcFamily`].
pub struct QpWarmStart {
    config: QpWarmStartConfig,
    mlp: Mlp,
    /// Per-coordinate label mean and standard deviation, (y, λ) concatenated.
    mean: Vec<f32>,
    std: Vec<f32>,
    variables: usize,
}

/// One record of warm-start training.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QpWarmStartRecord {
    /// Steps done.
    pub step: usize,
    /// Mean squared error of the standardised prediction on this step's batch.
    pub loss: f64,
}

/// Labels (y*, λ*) of every initial state, concatenated, by ADMM at `eps`.
fn labels(family: &MpcFamily, x0s: &[Vec<f64>], eps: f64) -> Result<Vec<Vec<f64>>> {
    let admm = Admm::new(AdmmSettings {
        max_iters: 100_000,
        ..AdmmSettings::accurate(eps)
    })?;
    x0s.iter()
        .map(|x0| {
            let s = admm.solve(&family.instance(x0)?, None)?;
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

/// The MLP x₀ ↦ (y, λ) (standardised) for `family`, θ drawn from `rng`.
fn network(cfg: &QpWarmStartConfig, family: &MpcFamily, rng: &mut StdRng) -> Result<Mlp> {
    Mlp::new(
        MlpConfig {
            hidden: cfg.hidden.clone(),
            activation: Activation::Relu,
            project_output: false,
        },
        family.states(),
        family.variables() + family.constraints(),
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
    /// Labels `cfg.train_instances` random initial states of `cfg.family()` and fits the MLP;
    /// `observe` sees every step.
    pub fn train(
        cfg: &QpWarmStartConfig,
        mut observe: impl FnMut(&QpWarmStartRecord),
    ) -> Result<(Self, Vec<QpWarmStartRecord>)> {
        cfg.validate()?;
        let family = cfg.family()?;
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x57A2);
        let x0s: Vec<Vec<f64>> = (0..cfg.train_instances)
            .map(|_| family.sample_initial_state(&mut rng))
            .collect();
        let targets = labels(&family, &x0s, cfg.label_eps)?;
        let dim = targets[0].len();
        let count = targets.len() as f64;
        let mut mean = vec![0.0f64; dim];
        for t in &targets {
            mean.iter_mut().zip(t).for_each(|(m, v)| *m += v / count);
        }
        let mut var = vec![0.0f64; dim];
        for t in &targets {
            var.iter_mut()
                .zip(t.iter().zip(&mean))
                .for_each(|(s, (v, m))| *s += (v - m).powi(2) / count);
        }
        let std: Vec<f64> = var.iter().map(|v| v.sqrt().max(1e-6)).collect();
        let standardised: Vec<Vec<f64>> = targets
            .iter()
            .map(|t| {
                t.iter()
                    .zip(mean.iter().zip(&std))
                    .map(|(v, (m, s))| (v - m) / s)
                    .collect()
            })
            .collect();
        let device = Device::Cpu;
        let mlp = network(cfg, &family, &mut rng)?;
        let vars: Vec<candle_core::Var> = mlp.params().vars().cloned().collect();
        let adam = Adam::default();
        let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let mut state = adam.init(&tensors)?;
        let mut records = Vec::with_capacity(cfg.steps);
        for step in 0..cfg.steps {
            let idx: Vec<usize> = (0..cfg.batch)
                .map(|_| rng.random_range(0..x0s.len()))
                .collect();
            let x = rows_tensor(
                &idx.iter().map(|&i| x0s[i].as_slice()).collect::<Vec<_>>(),
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
        let model = QpWarmStart {
            config: cfg.clone(),
            mlp,
            mean: mean.iter().map(|v| *v as f32).collect(),
            std: std.iter().map(|v| *v as f32).collect(),
            variables: family.variables(),
        };
        Ok((model, records))
    }

    /// The settings the model was trained with (its family is `config().family()`).
    pub fn config(&self) -> &QpWarmStartConfig {
        &self.config
    }

    /// The predicted (y, λ) of every initial state, in the QP's original units.
    pub fn predict(&self, x0s: &[Vec<f64>]) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        let nx = self.config.states;
        if let Some(bad) = x0s.iter().find(|x| x.len() != nx) {
            return Err(Error::invalid(format!(
                "warm start: an initial state has {} entries, the model's family has {nx}",
                bad.len()
            )));
        }
        if x0s.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "warm start: an initial state contains NaN or infinite values",
            ));
        }
        if x0s.is_empty() {
            return Ok(Vec::new());
        }
        let x = rows_tensor(
            &x0s.iter().map(|v| v.as_slice()).collect::<Vec<_>>(),
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

    /// Saves θ and the label statistics (`warm-start.safetensors`) and the settings
    /// (`warm-start.json`) into `dir`, both atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut map = self.mlp.params().to_map();
        let device = Device::Cpu;
        map.insert(
            "label.mean".into(),
            Tensor::new(self.mean.as_slice(), &device)?,
        );
        map.insert(
            "label.std".into(),
            Tensor::new(self.std.as_slice(), &device)?,
        );
        let meta = WarmStartMeta {
            format: WARM_START_FORMAT.into(),
            config: self.config.clone(),
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
        let family = meta.config.family()?;
        let dim = family.variables() + family.constraints();
        let mlp = network(&meta.config, &family, &mut StdRng::seed_from_u64(0))?;
        let mut tensors = files.load_tensors()?;
        let mut stat = |name: &str| -> Result<Vec<f32>> {
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
            Ok(v)
        };
        let (mean, std) = (stat("label.mean")?, stat("label.std")?);
        files.fill(mlp.params(), &tensors, "model")?;
        Ok(QpWarmStart {
            config: meta.config,
            mlp,
            mean,
            std,
            variables: family.variables(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmStartMeta {
    format: String,
    config: QpWarmStartConfig,
}

const WARM_START_FORMAT: &str = "amortize-qp-warm-start-1";
