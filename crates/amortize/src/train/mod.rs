//! Learning θ: the training loop, its observers and checkpoints.

mod checkpoint;
mod observer;
mod trainer;

pub use checkpoint::{write_atomic, Checkpoint, CheckpointMeta, CHECKPOINT_FORMAT_VERSION};
pub use observer::{JsonlWriter, Observer, Record};
pub use trainer::{DataConfig, TrainConfig, TrainSummary, Trainer};
