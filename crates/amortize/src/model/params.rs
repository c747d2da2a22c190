//! An ordered, named set of trainable tensors θ.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::{Error, Result};

/// The parameters of a model, in a fixed order (the order of construction), each with a name
/// that is its key in checkpoints.
#[derive(Debug, Clone, Default)]
pub struct Params {
    entries: Vec<(String, Var)>,
}

impl Params {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter initialised with `value`; returns the variable.
    pub fn add(&mut self, name: impl Into<String>, value: Tensor) -> Result<Var> {
        let var = Var::from_tensor(&value)?;
        self.entries.push((name.into(), var.clone()));
        Ok(var)
    }

    /// Adds an existing variable (shared, not copied) under `name`, e.g. a sub-model's
    /// parameter under a prefixed name.
    pub fn insert(&mut self, name: impl Into<String>, var: Var) {
        self.entries.push((name.into(), var));
    }

    /// The variables in order.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Names and variables in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Snapshot as a name → tensor map (for safetensors).
    pub fn to_map(&self) -> HashMap<String, Tensor> {
        self.entries
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites every parameter from `map`, which must hold exactly these names with these
    /// shapes; the error names the first mismatch.
    pub fn load_map(&self, map: &HashMap<String, Tensor>) -> Result<()> {
        if map.len() != self.entries.len() {
            return Err(Error::invalid(format!(
                "expected {} parameter tensors, found {}",
                self.entries.len(),
                map.len()
            )));
        }
        for (name, var) in &self.entries {
            let t = map
                .get(name)
                .ok_or_else(|| Error::invalid(format!("parameter '{name}' is missing")))?;
            if t.dims() != var.dims() {
                return Err(Error::invalid(format!(
                    "parameter '{name}' has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
        }
        for (name, var) in &self.entries {
            var.set(&map[name].to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}
