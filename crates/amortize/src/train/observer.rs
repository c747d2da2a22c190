//! Observers receive one [`Record`] per logged step (training or held-out evaluation).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Error, Result};

/// One logged step: which phase, the step number and named values.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// "train" or "eval".
    pub phase: &'static str,
    /// The training step (1-based: the number of updates taken).
    pub step: usize,
    /// Seconds since training started.
    pub elapsed: f64,
    /// Named values (loss, learning rate, gradient norm, held-out objective, …).
    pub values: Vec<(&'static str, f64)>,
}

impl Record {
    /// The value named `key`, if present.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// Receives records as training goes.
pub trait Observer {
    /// Called for every record.
    fn observe(&mut self, record: &Record) -> Result<()>;
}

/// Writes each record as one JSON line `{"phase", "step", "elapsed", <values>…}`.
///
/// Lines go to a hidden `.<name>.partial` file beside `path`, which replaces `path` when the
/// writer is dropped (the run ended, well or with an error): an earlier run's file stays
/// intact until then, and a killed run leaves only the partial file.
pub struct JsonlWriter {
    path: PathBuf,
    partial: PathBuf,
    out: BufWriter<File>,
}

impl JsonlWriter {
    /// Starts writing the lines that will replace `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let partial = path.with_file_name(format!(".{name}.partial"));
        let file = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        Ok(JsonlWriter {
            path,
            partial,
            out: BufWriter::new(file),
        })
    }
}

impl Drop for JsonlWriter {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; the partial file then stays for inspection.
        if self.out.flush().is_ok() {
            let _ = std::fs::rename(&self.partial, &self.path);
        }
    }
}

impl Observer for JsonlWriter {
    fn observe(&mut self, record: &Record) -> Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("phase".into(), record.phase.into());
        obj.insert("step".into(), record.step.into());
        obj.insert("elapsed".into(), record.elapsed.into());
        for (k, v) in &record.values {
            obj.insert((*k).into(), serde_json::Value::from(*v));
        }
        serde_json::to_writer(&mut self.out, &obj)?;
        writeln!(self.out).map_err(|e| Error::io(&self.partial, e))?;
        // Flushing every line would cost a system call per training step.
        if record.phase != "train" || record.step.is_multiple_of(100) {
            self.out.flush().map_err(|e| Error::io(&self.partial, e))?;
        }
        Ok(())
    }
}
