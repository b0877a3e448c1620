//! `standin keys`: TLS identities.

use std::path::PathBuf;

use anyhow::Result;

use super::Exit;

/// Subcommands of `standin keys`.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a self-signed identity (ECDSA P-256) and print its fingerprint.
    #[command(
        after_help = "Example:\n  standin keys init --dir /etc/standin/identity\n  # prints sha256:…; give it to the peer's --trust"
    )]
    Init {
        /// Directory for cert.pem and key.pem (mode 0600).
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing identity (peers must then trust the new fingerprint).
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the fingerprint of an existing identity.
    #[command(after_help = "Example:\n  standin keys show --dir /etc/standin/identity --json")]
    Show {
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: KeysCommand) -> Result<Exit> {
    let (fpr, dir, json) = match command {
        KeysCommand::Init { dir, force, json } => {
            (standin_link::identity::init(&dir, force)?, dir, json)
        }
        KeysCommand::Show { dir, json } => {
            (standin_link::identity::load(&dir)?.fingerprint, dir, json)
        }
    };
    if json {
        let v = serde_json::json!({
            "fingerprint": fpr.to_string(),
            "cert": dir.join(standin_link::identity::CERT_FILE),
            "key": dir.join(standin_link::identity::KEY_FILE),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{fpr}");
    }
    Ok(Exit::Ok)
}
