//! The one check of an SSH public key line (`authorized_keys` format), shared by the node
//! service (which refuses a bad line as malformed), the Linux engine and the in-memory one.

/// Longest key line accepted, in bytes.
pub const MAX_KEY_LINE: usize = 16 * 1024;

/// Checks `line` is one OpenSSH public key line, `<type> <base64> [comment]`; returns it
/// trimmed, or what is wrong with it.
pub fn check(line: &str) -> Result<&str, &'static str> {
    let line = line.trim();
    if line.contains('\n') || line.contains('\r') {
        return Err("more than one line");
    }
    if line.len() > MAX_KEY_LINE {
        return Err("longer than 16 KiB");
    }
    let mut parts = line.split_whitespace();
    let kind = parts.next().ok_or("empty")?;
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) {
        return Err("expected a key type such as ssh-ed25519");
    }
    let blob = parts.next().ok_or("no key material")?;
    if blob.len() < 16
        || !blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return Err("key material is not base64");
    }
    Ok(line)
}

/// The key material of a line (what identifies the key; the comment may differ).
pub fn blob(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxX alice@laptop";

    #[test]
    fn good_lines_pass_trimmed() {
        assert_eq!(check(&format!("  {KEY}\n")), Ok(KEY));
        assert_eq!(blob(KEY), "AAAAC3NzaC1lZDI1NTE5AAAAIJxX");
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert_eq!(check(""), Err("empty"));
        assert_eq!(
            check("rsa AAAAB3NzaC1yc2EAAAADAQAB"),
            Err("expected a key type such as ssh-ed25519")
        );
        assert_eq!(check("ssh-ed25519"), Err("no key material"));
        assert_eq!(
            check("ssh-ed25519 short"),
            Err("key material is not base64")
        );
        assert_eq!(
            check("ssh-ed25519 AAAA$$$$AAAAAAAAAAAAAA"),
            Err("key material is not base64")
        );
        assert_eq!(check(&format!("{KEY}\n{KEY}")), Err("more than one line"));
        let long = format!("ssh-ed25519 {}", "A".repeat(MAX_KEY_LINE));
        assert_eq!(check(&long), Err("longer than 16 KiB"));
    }
}
