//! Experiment files: one TOML that names a problem, a model, training and evaluation settings.
//! The built-in experiments are the files in `configs/`, embedded in the binary.

use std::path::Path;

use amortize::eval::SpeedConfig;
use amortize::model::ModelConfig;
use amortize::problem::ProblemConfig;
use amortize::train::TrainConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The built-in experiments: (name, TOML text).
pub const BUILTIN: [(&str, &str); 22] = [
    ("sphere", include_str!("../../../configs/sphere.toml")),
    ("toy1d", include_str!("../../../configs/toy1d.toml")),
    ("lista", include_str!("../../../configs/lista.toml")),
    ("psd", include_str!("../../../configs/psd.toml")),
    ("alista", include_str!("../../../configs/alista.toml")),
    ("patches", include_str!("../../../configs/patches.toml")),
    (
        "sphere-semi",
        include_str!("../../../configs/sphere-semi.toml"),
    ),
    (
        "lista-paper",
        include_str!("../../../configs/lista-paper.toml"),
    ),
    (
        "lista-paper-start",
        include_str!("../../../configs/lista-paper-start.toml"),
    ),
    (
        "lista-lasso-paper",
        include_str!("../../../configs/lista-lasso-paper.toml"),
    ),
    (
        "lista-cpss-paper",
        include_str!("../../../configs/lista-cpss-paper.toml"),
    ),
    ("maml", include_str!("../../../configs/maml.toml")),
    ("fomaml", include_str!("../../../configs/fomaml.toml")),
    ("metasgd", include_str!("../../../configs/metasgd.toml")),
    ("reptile", include_str!("../../../configs/reptile.toml")),
    ("imaml", include_str!("../../../configs/imaml.toml")),
    ("hypernet", include_str!("../../../configs/hypernet.toml")),
    ("neural-fp", include_str!("../../../configs/neural-fp.toml")),
    ("hyper-aa", include_str!("../../../configs/hyper-aa.toml")),
    (
        "hyper-aa-preconditioned",
        include_str!("../../../configs/hyper-aa-preconditioned.toml"),
    ),
    (
        "hyper-aa-qp",
        include_str!("../../../configs/hyper-aa-qp.toml"),
    ),
    (
        "neural-fp-qp",
        include_str!("../../../configs/neural-fp-qp.toml"),
    ),
];

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out contexts (default 1024).
    pub size: usize,
    /// A context counts as solved when its gap is at most this (default 0.01).
    pub tolerance: f64,
    /// Speed-at-equal-quality settings.
    pub speed: SpeedConfig,
    /// For a semi-amortized (`unrolled`) model: also train the same model as a warm start
    /// (its init alone, refined by the same steps only at prediction time) with the same budget,
    /// and write the gap per iterate of both side by side (`semi-vs-warm.csv`, default false).
    pub compare_warm_start: bool,
    /// For a fixed-point family: iterations of the residual comparison (default 100; at least
    /// the model's trained steps).
    pub fixed_point_iterations: usize,
    /// For a fixed-point family: the normalised residual at which an instance counts as solved
    /// (default 1e-4).
    pub fixed_point_tolerance: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            size: 1024,
            tolerance: 0.01,
            speed: SpeedConfig::default(),
            compare_warm_start: false,
            fixed_point_iterations: 100,
            fixed_point_tolerance: 1e-4,
        }
    }
}

/// Figure settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FigureConfig {
    /// Write figures at all (default true).
    pub enabled: bool,
    /// Contexts whose predictions are followed along training (default 8).
    pub track_contexts: usize,
    /// Snapshots of those predictions along training (default 24).
    pub snapshots: usize,
}

impl Default for FigureConfig {
    fn default() -> Self {
        FigureConfig {
            enabled: true,
            track_contexts: 8,
            snapshots: 24,
        }
    }
}

/// A whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Name of the run folder `runs/<name>/`.
    pub name: String,
    /// Seed of everything random (default 0).
    #[serde(default)]
    pub seed: u64,
    /// The problem family.
    pub problem: ProblemConfig,
    /// The model.
    #[serde(default)]
    pub model: ModelConfig,
    /// Another experiment (a built-in name or a TOML path) to train first, on the same problem
    /// and seed, whose trained model this one starts from ([`Model::init_from`]: a copy of θ
    /// for the same model, or an exact conversion such as LISTA from ALISTA). Default none.
    ///
    /// [`Model::init_from`]: amortize::model::Model::init_from
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// Training.
    #[serde(default)]
    pub train: TrainConfig,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Figures.
    #[serde(default)]
    pub figures: FigureConfig,
}

impl Experiment {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let e: Experiment = toml::from_str(text).map_err(|err| {
            // One line: the message and where it is, without toml's multi-line excerpt.
            let at = err.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line} column {col}")
            });
            anyhow::anyhow!(
                "{origin}: malformed experiment: {}{}",
                err.message().trim().replace('\n', "; "),
                at.unwrap_or_default()
            )
        })?;
        e.validate()
            .with_context(|| format!("{origin}: invalid experiment"))?;
        Ok(e)
    }

    /// A built-in experiment by name, or a TOML file by path.
    pub fn resolve(spec: &str) -> Result<Self> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
            return Self::parse(text, &format!("built-in experiment '{spec}'"));
        }
        let path = Path::new(spec);
        if path.extension().is_some_and(|e| e == "toml") || path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read experiment file {}", path.display()))?;
            return Self::parse(&text, &path.display().to_string());
        }
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        bail!(
            "unknown experiment '{spec}': not a built-in ({}) and not a .toml file",
            names.join(", ")
        )
    }

    /// Checks cross-field constraints.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            bail!(
                "name '{}' must be non-empty and use only letters, digits, '-', '_' and '.'",
                self.name
            );
        }
        self.train.validate()?;
        if self.eval.size == 0 {
            bail!("eval.size must be at least 1");
        }
        if !(self.eval.tolerance.is_finite() && self.eval.tolerance >= 0.0) {
            bail!("eval.tolerance must be finite and >= 0");
        }
        if !(self.eval.fixed_point_tolerance.is_finite() && self.eval.fixed_point_tolerance > 0.0) {
            bail!("eval.fixed_point_tolerance must be finite and > 0");
        }
        self.problem.build()?;
        Ok(())
    }

    /// The TOML text of this experiment (written into the run folder).
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse() {
        for (name, _) in BUILTIN {
            let e = Experiment::resolve(name).unwrap();
            assert_eq!(e.name, name);
            let again = Experiment::parse(&e.to_toml().unwrap(), "round trip").unwrap();
            assert_eq!(again, e);
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = BUILTIN[0].1.replace("gamma = 0.5", "gamma = 0.5\ngama = 1");
        let e = format!("{:#}", Experiment::parse(&text, "x.toml").unwrap_err());
        assert!(e.contains("gama"), "{e}");
    }
}
