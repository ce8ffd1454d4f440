//! Passes events through after busy-waiting `delay-us` microseconds (default 1000) per batch:
//! a stage slower than its input, for backpressure tests.

use std::time::{Duration, Instant};

use squilla_sdk::prelude::*;

struct Slow {
    delay: Duration,
}

#[stage]
impl Stage for Slow {
    fn init(params: &Params) -> Result<Self, StageError> {
        Ok(Slow { delay: Duration::from_micros(params.get_or("delay-us", 1_000)?) })
    }

    fn process(&mut self, input: BatchView<'_>, out: &mut BatchBuilder) -> Result<(), StageError> {
        let started = Instant::now();
        while started.elapsed() < self.delay {
            std::hint::spin_loop();
        }
        for event in input.events() {
            out.push_ref(event);
        }
        Ok(())
    }
}
