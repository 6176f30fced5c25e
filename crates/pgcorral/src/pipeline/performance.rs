//! The performance pipeline: the relay and nothing else, so the hot path never touches the shared
//! region. No TLS (pgagroal's pipeline_perf.c makes the same trade).

use super::Pipeline;

/// Relays bytes; follows boundaries only as the relay itself does.
#[derive(Debug, Default)]
pub struct Performance;

impl Pipeline for Performance {
    fn name(&self) -> &'static str {
        "performance"
    }
}
