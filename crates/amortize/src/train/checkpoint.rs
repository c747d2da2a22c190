//! Checkpoints: a folder with `weights.safetensors` (θ) and `meta.json` (what rebuilds the
//! model and what it was trained on). Both are written atomically (temporary file + rename), so
//! a crash never leaves a half-written checkpoint in place of a good one.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelConfig};
use crate::problem::{Problem, ProblemConfig};
use crate::{Error, Result};

/// The metadata format written by this version; loading refuses any other.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

const WEIGHTS: &str = "weights.safetensors";
const META: &str = "meta.json";

/// What `meta.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// [`CHECKPOINT_FORMAT_VERSION`] at writing time.
    pub format_version: u32,
    /// The problem family and its settings.
    pub problem: ProblemConfig,
    /// Context dimension of that problem.
    pub context_dim: usize,
    /// Solution dimension of that problem.
    pub solution_dim: usize,
    /// The model's configuration.
    pub model: ModelConfig,
    /// Training steps taken.
    pub step: usize,
    /// The seed the run started from.
    pub seed: u64,
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Saving and loading checkpoints.
pub struct Checkpoint;

/// Writes `tensors` as a safetensors file at `path` atomically (a temporary file, then a
/// rename).
pub fn save_tensors_atomic(
    path: &Path,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    let tmp = temp_path(path);
    candle_core::safetensors::save(tensors, &tmp)?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The two files of a small model outside the trainer (RLQP's policy, the QP warm start):
/// `<stem>.safetensors` (θ and any other tensors) and `<stem>.json` (a metadata struct with a
/// format tag) in one folder, both written atomically; loading names the file and the problem.
pub(crate) struct ModelFiles<'a> {
    dir: &'a Path,
    stem: &'a str,
}

impl<'a> ModelFiles<'a> {
    /// The files `<stem>.*` in `dir`.
    pub(crate) fn new(dir: &'a Path, stem: &'a str) -> Self {
        ModelFiles { dir, stem }
    }

    /// Creates the folder and writes both files.
    pub(crate) fn save<M: Serialize>(
        &self,
        meta: &M,
        tensors: &HashMap<String, candle_core::Tensor>,
    ) -> Result<()> {
        fs::create_dir_all(self.dir).map_err(|e| Error::io(self.dir, e))?;
        save_tensors_atomic(
            &self.dir.join(format!("{}.safetensors", self.stem)),
            tensors,
        )?;
        write_atomic(
            &self.dir.join(format!("{}.json", self.stem)),
            serde_json::to_string_pretty(meta)?.as_bytes(),
        )
    }

    /// A checkpoint error for this folder.
    pub(crate) fn refuse(&self, reason: String) -> Error {
        Error::Checkpoint {
            path: self.dir.to_path_buf(),
            reason,
        }
    }

    /// The metadata, refusing a missing or malformed file and a format tag other than
    /// `expected` (`format_of` reads the tag).
    pub(crate) fn load_meta<M: serde::de::DeserializeOwned>(
        &self,
        expected: &str,
        format_of: impl Fn(&M) -> &str,
    ) -> Result<M> {
        let name = format!("{}.json", self.stem);
        let text = fs::read_to_string(self.dir.join(&name))
            .map_err(|e| self.refuse(format!("cannot read {name}: {e}")))?;
        let meta: M = serde_json::from_str(&text)
            .map_err(|e| self.refuse(format!("{name} is malformed: {e}")))?;
        let found = format_of(&meta);
        if found != expected {
            return Err(self.refuse(format!("format '{found}' is not '{expected}'")));
        }
        Ok(meta)
    }

    /// The tensors, refusing a missing or corrupt file.
    pub(crate) fn load_tensors(&self) -> Result<HashMap<String, candle_core::Tensor>> {
        let name = format!("{}.safetensors", self.stem);
        candle_core::safetensors::load(self.dir.join(&name), &Device::Cpu)
            .map_err(|e| self.refuse(format!("{name} is missing or corrupt: {e}")))
    }

    /// Fills `params` from `tensors`, refusing tensors that do not fit (`what`: the model).
    pub(crate) fn fill(
        &self,
        params: &crate::model::Params,
        tensors: &HashMap<String, candle_core::Tensor>,
        what: &str,
    ) -> Result<()> {
        params.load_map(tensors).map_err(|e| {
            self.refuse(format!(
                "{}.safetensors does not fit the {what}: {e}",
                self.stem
            ))
        })
    }
}

/// A loaded checkpoint: its metadata, the rebuilt problem and the model with θ filled in.
pub struct Loaded {
    /// The metadata.
    pub meta: CheckpointMeta,
    /// The problem it was trained on.
    pub problem: Box<dyn Problem>,
    /// The trained model.
    pub model: Box<dyn Model>,
}

impl Checkpoint {
    /// Saves θ and `meta` into folder `dir` (created if needed).
    pub fn save(dir: &Path, model: &dyn Model, meta: &CheckpointMeta) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        save_tensors_atomic(&dir.join(WEIGHTS), &model.params().to_map())?;
        write_atomic(
            &dir.join(META),
            serde_json::to_string_pretty(meta)?.as_bytes(),
        )
    }

    /// Reads and validates `meta.json` of checkpoint folder `dir`.
    pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
        let refuse = |reason: String| Error::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        let meta_path = dir.join(META);
        let text = fs::read_to_string(&meta_path).map_err(|e| {
            refuse(format!(
                "cannot read {} ({e}); is this a checkpoint folder?",
                meta_path.display()
            ))
        })?;
        let meta: CheckpointMeta = serde_json::from_str(&text)
            .map_err(|e| refuse(format!("meta.json is corrupt or from another tool: {e}")))?;
        if meta.format_version != CHECKPOINT_FORMAT_VERSION {
            return Err(refuse(format!(
                "format version {} is not supported (this build reads version {})",
                meta.format_version, CHECKPOINT_FORMAT_VERSION
            )));
        }
        Ok(meta)
    }

    /// Loads a checkpoint: rebuilds its problem and model and fills θ from the weights file.
    /// Refuses corrupt files and weights that do not match the recorded model.
    pub fn load(dir: &Path, device: &Device) -> Result<Loaded> {
        let refuse = |reason: String| Error::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        let meta = Self::read_meta(dir)?;
        let problem = meta
            .problem
            .build()
            .map_err(|e| refuse(format!("its problem cannot be rebuilt: {e}")))?;
        if problem.context_dim() != meta.context_dim || problem.solution_dim() != meta.solution_dim
        {
            return Err(refuse(format!(
                "recorded dimensions ({}, {}) disagree with its problem's ({}, {})",
                meta.context_dim,
                meta.solution_dim,
                problem.context_dim(),
                problem.solution_dim()
            )));
        }
        let mut rng = rand::SeedableRng::seed_from_u64(meta.seed);
        let model = meta.model.build(problem.as_ref(), &mut rng, device)?;
        let weights = dir.join(WEIGHTS);
        let map: HashMap<String, candle_core::Tensor> =
            candle_core::safetensors::load(&weights, device)
                .map_err(|e| refuse(format!("{WEIGHTS} is missing or corrupt: {e}")))?;
        model
            .params()
            .load_map(&map)
            .map_err(|e| refuse(format!("weights do not match the recorded model: {e}")))?;
        Ok(Loaded {
            meta,
            problem,
            model,
        })
    }

    /// Loads a checkpoint and checks it was trained on `expected` (same family and settings).
    pub fn load_for(dir: &Path, expected: &ProblemConfig, device: &Device) -> Result<Loaded> {
        let meta = Self::read_meta(dir)?;
        if &meta.problem != expected {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                reason: format!(
                    "it was trained on problem '{}' ({:?}), not on '{}' ({:?})",
                    meta.problem.name(),
                    meta.problem,
                    expected.name(),
                    expected
                ),
            });
        }
        Self::load(dir, device)
    }
}
