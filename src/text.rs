//! Echoing in messages what a file or a user gave: bounded, so a 10 MB line in a config file or
//! a key of a million characters in a checkpoint costs a line of stderr, not megabytes.

/// `s`, cut to `max` characters with an ellipsis and its length in bytes.
pub fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &s[..cut], s.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_echoed_only_so_far() {
        let long = "x".repeat(10_000);
        let s = shorten(&long, 40);
        assert!(s.len() < 70 && s.ends_with("(10000 bytes)"), "{s}");
        assert_eq!(shorten("short", 40), "short");
        assert_eq!(shorten("ééé", 2), "éé… (6 bytes)");
    }
}
