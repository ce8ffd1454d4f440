//! A raw stage that breaks the contract without trapping: `process` returns three bytes that
//! are not a batch, `tick` returns a retryable stage error. Written against the WIT directly,
//! since the SDK cannot produce either.

wit_bindgen::generate!({ path: "../../../wit", world: "squilla:stage/raw-stage" });

use exports::squilla::stage::raw_handler::Guest;
use squilla::stage::types::StageError;

struct Corrupt;

impl Guest for Corrupt {
    fn init(_params: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn process(_batch: Vec<u8>) -> Result<Vec<u8>, StageError> {
        Ok(vec![0xff, 0xff, 0xff])
    }

    fn tick(_now_ms: i64) -> Result<Vec<u8>, StageError> {
        Err(StageError { message: "tick failed".into(), retryable: true })
    }
}

export!(Corrupt);
