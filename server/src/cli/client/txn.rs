//! `phxkv txn FILE|-`: runs a transaction written as the API's JSON.

use std::path::PathBuf;

use clap::Args;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::http::{self, Client};
use super::{ConnectArgs, print_json};
use crate::cli::CliError;

#[derive(Args, Debug)]
#[command(after_help = r#"The file is the body of POST /v1/txn, for example:
  {"compare": [{"key": "lock", "target": "version", "version": 0}],
   "success": [{"put": {"key": "lock", "value": "me"}}],
   "failure": [{"get": {"key": "lock"}}]}
The JSON answer is printed; the exit code is 1 when a compare did not hold
(so the failure branch ran)."#)]
pub struct TxnArgs {
    /// A JSON file with the transaction, or `-` for stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn run(args: TxnArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let body = if args.file.as_os_str() == "-" {
        let mut buf = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut buf)
            .await
            .map_err(|e| CliError::Fatal(format!("cannot read the transaction from stdin: {e}")))?;
        buf
    } else {
        tokio::fs::read(&args.file)
            .await
            .map_err(|e| CliError::Usage(format!("{}: {e}", args.file.display())))?
    };
    // Catch a typo here, with a position, rather than as a terse 400.
    let txn: Value = serde_json::from_slice(&body)
        .map_err(|e| CliError::Usage(format!("the transaction is not valid JSON: {e}")))?;
    let resp = client
        .send_write(|h, base| h.post(format!("{base}/v1/txn")).json(&txn))
        .await?;
    let result: Value = http::json(resp).await?;
    print_json(&result)?;
    if result["succeeded"].as_bool() == Some(true) {
        Ok(())
    } else {
        Err(CliError::NotFound(
            "compare failed: the transaction ran its failure branch".into(),
        ))
    }
}
