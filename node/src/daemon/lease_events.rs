//! What the node protocol's `Events` and `LogsFrom` answer, beside the service: a sliver's
//! spawn log read from an offset (what `slicectl slice logs --follow` polls), and the
//! sentences the node records as lease events' reasons. The events themselves live in the
//! ledger ([`crate::ledger::Ledger::events`]).

use capability_schema::Rejection;
use capability_schema::protocol::{ExecOutput, LogChunk};

use super::service::{BackendError, SPAWN_LOG, SliverBackend};

/// The reason of a `reaped` event.
pub const REAPED: &str = "the lease reached its end; the node destroyed its sliver";

/// The reason of a `lost` event.
pub const LOST: &str = "its sliver was gone when the node restarted; the node dropped the lease";

/// The shell script that prints the spawn log's size on a line, then at most `max` bytes of
/// it from byte `offset`.
pub(crate) fn log_from_script(offset: u64, max: u64) -> String {
    format!(
        "wc -c 2>/dev/null <{SPAWN_LOG} || echo 0; \
         tail -c +{} {SPAWN_LOG} 2>/dev/null | head -c {max}; true",
        offset.saturating_add(1)
    )
}

/// The offset and count of a [`log_from_script`] (for backends that do not run shells).
pub(crate) fn parse_log_from(script: &str) -> Option<(u64, u64)> {
    let rest = script.strip_prefix("wc -c ")?;
    let (_, start) = rest.split_once("tail -c +")?;
    let start: u64 = start.split_whitespace().next()?.parse().ok()?;
    let (_, max) = start_of(rest, "head -c ")?;
    let max: u64 = max.trim_end_matches(';').parse().ok()?;
    Some((start.checked_sub(1)?, max))
}

fn start_of<'a>(text: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let (before, after) = text.split_once(marker)?;
    Some((before, after.split_whitespace().next()?))
}

/// Reads the spawn log of sliver `sliver_id` from `offset`, at most `max_bytes` (capped at
/// [`LogChunk::MAX_BYTES`]).
pub(crate) fn log_from(
    backend: &dyn SliverBackend,
    sliver_id: &str,
    offset: u64,
    max_bytes: u64,
) -> Result<LogChunk, Rejection> {
    let script = log_from_script(offset, max_bytes.clamp(1, LogChunk::MAX_BYTES));
    let argv = ["/bin/sh".to_owned(), "-c".to_owned(), script];
    let out = backend
        .exec(sliver_id, &argv, &[], 10_000)
        .map_err(Rejection::from)?;
    chunk(out)
}

/// The script's output as a chunk: the size line, then the bytes.
fn chunk(out: ExecOutput) -> Result<LogChunk, Rejection> {
    if out.not_run() {
        return Err(BackendError::Host(
            "this node runs no programs (isolation = \"memory\")".into(),
        )
        .into());
    }
    let Some(newline) = out.stdout.iter().position(|b| *b == b'\n') else {
        return Err(Rejection::Internal {
            detail: format!(
                "reading the spawn log failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    };
    let size = String::from_utf8_lossy(&out.stdout[..newline])
        .trim()
        .parse()
        .map_err(|_| Rejection::Internal {
            detail: "reading the spawn log failed: no size".into(),
        })?;
    Ok(LogChunk {
        size,
        bytes: out.stdout[newline + 1..].to_vec(),
    })
}

/// Records a `frozen` event for each sliver the disk watchdog froze since its last pass
/// (those in `reports` frozen and not in `was`) and a `thawed` event for each it let go;
/// `was` becomes the slivers frozen now. Blocking (ledger writes).
pub(crate) fn note_freezes(
    ledger: &crate::ledger::Ledger,
    was: &mut std::collections::BTreeSet<String>,
    reports: &[crate::sliver::DiskReport],
) {
    use capability_schema::protocol::LeaseEventKind;

    let now: std::collections::BTreeSet<String> = reports
        .iter()
        .filter(|r| r.frozen)
        .map(|r| r.id.to_string())
        .collect();
    for r in reports
        .iter()
        .filter(|r| r.frozen && !was.contains(r.id.as_str()))
    {
        let why = r.condition();
        if let Err(e) = ledger.note_sliver(r.id.as_str(), LeaseEventKind::Frozen, why) {
            tracing::warn!(sliver = %r.id, error = %e, "frozen event not recorded");
        }
    }
    for id in was.iter().filter(|id| !now.contains(*id)) {
        let why = Some("back under its disk grant".to_owned());
        if let Err(e) = ledger.note_sliver(id, LeaseEventKind::Thawed, why) {
            tracing::warn!(sliver = %id, error = %e, "thawed event not recorded");
        }
    }
    *was = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_says_where_it_reads() {
        let script = log_from_script(41, 4096);
        assert_eq!(parse_log_from(&script), Some((41, 4096)));
        assert!(script.contains("tail -c +42 "), "{script}");
        assert_eq!(parse_log_from("tail -c 5 x"), None);
    }

    #[test]
    fn a_chunk_is_the_size_line_then_the_bytes() {
        let out = |stdout: &[u8]| ExecOutput {
            exit_code: 0,
            stdout: stdout.to_vec(),
            stderr: Vec::new(),
            truncated: false,
            timed_out: false,
        };
        let c = chunk(out(b"12\nworld\n")).unwrap();
        assert_eq!((c.size, c.bytes.as_slice()), (12, &b"world\n"[..]));
        let c = chunk(out(b"0\n")).unwrap();
        assert_eq!((c.size, c.bytes.len()), (0, 0));
        assert!(chunk(out(b"")).is_err());
    }
}
