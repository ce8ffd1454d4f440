//! Misbehaves as its parameters say, for the isolation tests that run it beside a neighbour:
//!
//! - `init`: `ok` (default), `fail` (returns an error), `spin` (loops forever);
//! - `process`: `pass` (default: passes events through), `spin` (loops forever on every
//!   batch), `trap` (traps on every batch), `busy-ms:N` (busy-waits N ms per batch, then
//!   passes events through), `garbage` is not possible through the SDK (see
//!   `corrupt-output`);
//! - `tick`: `ok` (default: emits nothing), `spin`, `trap`, `emit` (one event per tick).

use std::time::{Duration, Instant};

use squilla_sdk::prelude::*;

#[derive(Clone, Copy, PartialEq)]
enum Act {
    Ok,
    Spin,
    Trap,
    Busy(Duration),
    Emit,
}

fn act(text: &str) -> Result<Act, StageError> {
    Ok(match text {
        "ok" | "pass" => Act::Ok,
        "spin" => Act::Spin,
        "trap" => Act::Trap,
        "emit" => Act::Emit,
        other => match other.strip_prefix("busy-ms:").and_then(|n| n.parse::<u64>().ok()) {
            Some(ms) => Act::Busy(Duration::from_millis(ms)),
            None => return Err(StageError::new(format!("unknown behaviour `{other}`"))),
        },
    })
}

fn misbehave(act: Act) {
    match act {
        Act::Spin => {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Act::Trap => std::process::abort(),
        Act::Busy(d) => {
            let started = Instant::now();
            while started.elapsed() < d {
                std::hint::spin_loop();
            }
        }
        Act::Ok | Act::Emit => {}
    }
}

struct Hostile {
    process: Act,
    tick: Act,
    ticks: i64,
}

#[stage]
impl Stage for Hostile {
    fn init(params: &Params) -> Result<Self, StageError> {
        match params.get("init").unwrap_or("ok") {
            "ok" => {}
            "fail" => return Err(StageError::new("init refused, as asked")),
            "spin" => misbehave(Act::Spin),
            other => return Err(StageError::new(format!("unknown init behaviour `{other}`"))),
        }
        Ok(Hostile {
            process: act(params.get("process").unwrap_or("pass"))?,
            tick: act(params.get("tick").unwrap_or("ok"))?,
            ticks: 0,
        })
    }

    fn process(&mut self, input: BatchView<'_>, out: &mut BatchBuilder) -> Result<(), StageError> {
        if self.process == Act::Trap {
            squilla_sdk::log::error(format!("trapping on a batch of {} events, as asked", input.len()));
        }
        misbehave(self.process);
        for event in input.events() {
            out.push_ref(event);
        }
        Ok(())
    }

    fn tick(&mut self, now_ms: i64, out: &mut BatchBuilder) -> Result<(), StageError> {
        misbehave(self.tick);
        if self.tick == Act::Emit {
            self.ticks += 1;
            out.event(now_ms).field("tick", self.ticks);
        }
        Ok(())
    }
}
