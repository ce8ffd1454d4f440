//! Tries to read a host file in `init`. Using `std::fs` makes the component import
//! `wasi:filesystem`, which the host must refuse at load.

use squilla_sdk::prelude::*;

struct Reader;

#[stage]
impl Stage for Reader {
    fn init(_: &Params) -> Result<Self, StageError> {
        let secrets = std::fs::read_to_string("/etc/passwd").map_err(|e| StageError::new(e.to_string()))?;
        squilla_sdk::log::info(secrets);
        Ok(Reader)
    }

    fn process(&mut self, _input: BatchView<'_>, _out: &mut BatchBuilder) -> Result<(), StageError> {
        Ok(())
    }
}
