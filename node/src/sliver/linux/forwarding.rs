//! The uplink's IPv4 forwarding switch: the node turns it on for its slivers' egress and, when
//! its firewall table goes (wipe, a clean shutdown with no sliver), puts back what it found,
//! unless another node's table in the same network namespace still needs it. What it found is
//! kept in a note under the node's state dir, written once, so a restart does not mistake the
//! node's own setting for the host's.

use std::fs;
use std::path::Path;

use super::super::host::HostError;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostError + use<> {
    let path = path.to_path_buf();
    move |source| HostError::Io { op, path, source }
}

/// Turns forwarding on at `knob`, first noting (once) what it was at `note`.
pub(super) fn enable(knob: &Path, note: Option<&Path>) -> Result<(), HostError> {
    if let Some(note) = note
        && !note.exists()
    {
        let was = fs::read_to_string(knob).map_err(io("read", knob))?;
        fs::write(note, format!("{}\n", was.trim())).map_err(io("write", note))?;
    }
    fs::write(knob, "1").map_err(io("write", knob))
}

/// Puts back what [`enable`] found (when it was off and `still_needed` is false) and drops the
/// note. Without a note there is nothing to put back.
pub(super) fn restore(
    knob: &Path,
    note: Option<&Path>,
    still_needed: bool,
) -> Result<(), HostError> {
    let Some(note) = note else { return Ok(()) };
    let Ok(was) = fs::read_to_string(note) else {
        return Ok(());
    };
    if was.trim() == "0" && !still_needed {
        fs::write(knob, "0").map_err(io("write", knob))?;
    }
    fs::remove_file(note).map_err(io("remove", note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_goes_back_to_what_was_found_once_and_only_when_nobody_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let (knob, note) = (dir.path().join("forwarding"), dir.path().join("note"));
        fs::write(&knob, "0\n").unwrap();
        enable(&knob, Some(&note)).unwrap();
        assert_eq!(fs::read_to_string(&knob).unwrap(), "1");
        // A restart finds it on (its own doing) and keeps the first note.
        enable(&knob, Some(&note)).unwrap();
        assert_eq!(fs::read_to_string(&note).unwrap(), "0\n");
        restore(&knob, Some(&note), false).unwrap();
        assert_eq!(fs::read_to_string(&knob).unwrap(), "0");
        assert!(!note.exists());
        // Another node still forwarding through it: left on.
        enable(&knob, Some(&note)).unwrap();
        restore(&knob, Some(&note), true).unwrap();
        assert_eq!(fs::read_to_string(&knob).unwrap(), "1");
        // Found on: left on.
        enable(&knob, Some(&note)).unwrap();
        restore(&knob, Some(&note), false).unwrap();
        assert_eq!(fs::read_to_string(&knob).unwrap(), "1");
        // No note: nothing to do.
        restore(&knob, None, false).unwrap();
    }
}
