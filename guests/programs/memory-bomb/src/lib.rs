//! Allocates without bound in `process` (1 MiB at a time, each page touched) until the host's
//! memory cap stops it.

use squilla_sdk::prelude::*;

struct Bomb {
    hoard: Vec<Vec<u8>>,
}

#[stage]
impl Stage for Bomb {
    fn init(_: &Params) -> Result<Self, StageError> {
        Ok(Bomb { hoard: Vec::new() })
    }

    fn process(&mut self, _input: BatchView<'_>, _out: &mut BatchBuilder) -> Result<(), StageError> {
        loop {
            self.hoard.push(vec![0xa5; 1 << 20]);
        }
    }
}
