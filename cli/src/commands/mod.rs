//! Command handlers, one module per command group, plus helpers they share.

pub mod auth;
pub mod cluster;
pub mod console;
pub mod event;
pub mod flavor;
pub mod host;
pub mod image;
pub mod network;
pub mod operation;
pub mod project;
pub mod quota;
pub mod server;
pub mod user;

use std::collections::HashSet;
use std::future::Future;
use std::io::Write;

use crate::args::{Command, Format};
use crate::client::Connection;
use crate::error::{report, CliError};

/// What every handler needs.
pub struct Ctx {
    pub conn: Connection,
    pub format: Format,
    /// Set `stale` on reads.
    pub stale: bool,
    /// The CLI config file (explicit or default), where `login --save` writes the token.
    pub config_path: Option<std::path::PathBuf>,
}

/// Where handlers write: results to `out`, per-item errors of multi-item commands to `err`.
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

impl Io<'_> {
    pub fn print(&mut self, text: &str) -> Result<(), CliError> {
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }
}

pub async fn run(command: Command, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    match command {
        Command::Project(cmd) => project::run(cmd, ctx, io).await,
        Command::Flavor(cmd) => flavor::run(cmd, ctx, io).await,
        Command::Image(cmd) => image::run(cmd, ctx, io).await,
        Command::Cluster(cmd) => cluster::run(cmd, ctx, io).await,
        Command::Event(cmd) => event::run(cmd, ctx, io).await,
        Command::Login(a) => auth::login(a, ctx, io).await,
        Command::Whoami => auth::whoami(ctx, io).await,
        Command::Token(cmd) => auth::token(cmd, ctx, io).await,
        Command::User(cmd) => user::run(cmd, ctx, io).await,
        Command::Role(cmd) => auth::role(cmd, ctx, io).await,
        Command::Quota(cmd) => quota::run(cmd, ctx, io).await,
        Command::Server(cmd) => server::run(cmd, ctx, io).await,
        Command::Console(cmd) => console::run(cmd, ctx, io).await,
        Command::Host(cmd) => host::run(cmd, ctx, io).await,
        Command::Operation(cmd) => operation::run(cmd, ctx, io).await,
        Command::Network(cmd) => network::network(cmd, ctx, io).await,
        Command::Subnet(cmd) => network::subnet(cmd, ctx, io).await,
        Command::Port(cmd) => network::port(cmd, ctx, io).await,
        Command::Floating(cmd) => network::floating(cmd, ctx, io).await,
        Command::Security(cmd) => network::security(cmd, ctx, io).await,
    }
}

/// Follows `next_page_token` until it is empty. `fetch(token)` returns one page and the next
/// token.
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, CliError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), CliError>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    let mut seen = HashSet::new();
    loop {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        if !seen.insert(next.clone()) {
            return Err(CliError::Protocol(format!(
                "the controller returned page token `{next}` twice; stopping the listing"
            )));
        }
        token = next;
    }
}

/// Runs `op` for each name, reporting each failure on stderr and going on with the rest.
/// One failed item fails with its own error; several fail with a summary.
pub async fn for_each_name<F, Fut>(
    names: Vec<String>,
    what: &str,
    io: &mut Io<'_>,
    op: F,
) -> Result<(), CliError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(), CliError>>,
{
    let each = map_each_name(names, what, io, op).await?;
    each.error.map_or(Ok(()), Err)
}

/// What [`map_each_name`] got: the values of the items that succeeded (in order) and, when some
/// failed, the error the command ends with.
pub struct Each<T> {
    pub done: Vec<T>,
    pub error: Option<CliError>,
}

/// Like [`for_each_name`], keeping what each successful `op` returned so the caller can print
/// it before failing. With one item its error is returned as is; with several, each failure is
/// reported on stderr as `flotilla: error: {what} {name}: ...` and the error is a summary.
pub async fn map_each_name<T, F, Fut>(
    names: Vec<String>,
    what: &str,
    io: &mut Io<'_>,
    mut op: F,
) -> Result<Each<T>, CliError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, CliError>>,
{
    let total = names.len();
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for name in names {
        match op(name.clone()).await {
            Ok(value) => done.push(value),
            Err(e) => errors.push((name, e)),
        }
    }
    let error = if total == 1 {
        errors.pop().map(|(_, e)| e)
    } else {
        let failed = errors.len();
        for (name, e) in errors {
            writeln!(io.err, "flotilla: error: {what} {name}: {}", report(&e))?;
        }
        (failed > 0).then_some(CliError::Partial { failed, total })
    };
    Ok(Each { done, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pagination_follows_tokens_until_empty() {
        let pages = all_pages(|token| async move {
            Ok(match token.as_str() {
                "" => (vec![1, 2], "t1".to_string()),
                "t1" => (vec![3], "t2".to_string()),
                _ => (vec![4], String::new()),
            })
        })
        .await
        .unwrap();
        assert_eq!(pages, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_repeated_page_token_stops_the_listing() {
        let err = all_pages(|_| async { Ok((vec![1], "same".to_string())) })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[tokio::test]
    async fn failures_of_some_items_are_reported_and_the_rest_still_run() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut io = Io {
            out: &mut out,
            err: &mut err,
        };
        let mut done = Vec::new();
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let result = for_each_name(names, "cannot delete project", &mut io, |n| {
            done.push(n.clone());
            async move {
                if n == "b" {
                    Err(CliError::Status(tonic::Status::not_found("no b")))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(matches!(
            result,
            Err(CliError::Partial {
                failed: 1,
                total: 3
            })
        ));
        assert_eq!(done, ["a", "b", "c"]);
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "flotilla: error: cannot delete project b: no b [NOT_FOUND]\n"
        );
    }
}
