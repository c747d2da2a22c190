//! Learning θ: the training loop, its observers and checkpoints.

mod checkpoint;
mod implicit;
mod observer;
mod qp_warm_start;
mod rlqp;
mod smoothing;
mod trainer;

pub use checkpoint::{write_atomic, Checkpoint, CheckpointMeta, Loaded, CHECKPOINT_FORMAT_VERSION};
pub use implicit::implicit_gradient;
pub use observer::{JsonlWriter, Observer, Record};
pub use qp_warm_start::{QpWarmStart, QpWarmStartConfig, QpWarmStartRecord};
pub use rlqp::{
    iterations as qp_iterations, load_policy, load_policy_with_schedule, save_policy, solve_costs,
    train_rho_policy, RhoSchedule, RlqpConfig, RlqpRecord,
};
pub use smoothing::{es_gradient, smoothed_1d, GradientEstimator};
pub use trainer::{
    composite_step, exact_labels, held_out_contexts, DataConfig, Finish, Layerwise, LayerwisePhase,
    TrainConfig, TrainSummary, Trainer,
};
