//! `kxgw users`: the SASL credentials file of `kxgw serve --sasl-users` (salted SCRAM
//! credentials; passwords are never written).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kxgw::kafka::auth::scram::MIN_ITERATIONS;
use kxgw::kafka::auth::users::{check_user_name, UserEntry, Users};

/// Manage the SASL users file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The users file (`add` creates it, mode 0600, if missing).
    #[arg(long, global = true, value_name = "FILE")]
    file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: UsersCmd,
}

#[derive(Debug, clap::Subcommand)]
enum UsersCmd {
    /// Add a user (or replace its password): PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 logins.
    Add {
        /// SCRAM iteration count (Kafka's minimum is 4096).
        #[arg(long, default_value_t = MIN_ITERATIONS)]
        iterations: u32,
        /// User name.
        user: String,
        /// Password ("-": read one line from standard input).
        password: String,
    },
    /// Remove a user.
    Remove {
        /// User name.
        user: String,
    },
    /// List the user names.
    List,
}

/// Runs `kxgw users`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Some(file) = args.file else {
        bail!("kxgw users: give the users file with --file FILE");
    };
    match args.cmd {
        UsersCmd::Add {
            iterations,
            user,
            password,
        } => {
            check_user_name(&user)?;
            if iterations < MIN_ITERATIONS {
                bail!("--iterations {iterations}: at least {MIN_ITERATIONS}");
            }
            let password = if password == "-" {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                line.trim_end_matches(['\r', '\n']).to_string()
            } else {
                password
            };
            if password.is_empty() {
                bail!("empty password");
            }
            let mut users = Users::load_or_empty(&file)?;
            let replaced = users
                .users
                .insert(user.clone(), UserEntry::new(&password, iterations))
                .is_some();
            users.save(&file)?;
            let what = if replaced { "replaced" } else { "added" };
            println!("{what} user {user} in {}", file.display());
        }
        UsersCmd::Remove { user } => {
            let mut users = Users::load(&file)?;
            if users.users.remove(&user).is_none() {
                bail!("no user {user:?} in {}", file.display());
            }
            users.save(&file)?;
            println!("removed user {user} from {}", file.display());
        }
        UsersCmd::List => {
            for name in Users::load(&file)?.users.keys() {
                println!("{name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
