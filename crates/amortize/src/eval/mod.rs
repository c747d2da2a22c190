//! Evaluation (tutorial §8.3): how good the amortized answers are (the amortization gap) and
//! how fast they come compared with solving from scratch (speed at equal quality).

mod fixed_point;
mod gap;
mod iterates;
mod speed;

pub use fixed_point::{fixed_point_comparison, ResidualCurve};
pub use gap::{amortization_gap, GapReport, Quantiles};
pub use iterates::{mean_gaps, nmse_db, relative_gaps, solver_iterates};
pub use speed::{
    speed_at_equal_quality, time_median, Baseline, BaselineMethod, BaselineResult, Curve,
    SpeedConfig, SpeedReport,
};
