//! What this machine's memory allows. A file or a setting can ask for any size — a dataset
//! header for a billion images, `model.widen = 100000`, a checkpoint whose tensors claim
//! terabytes — so the size a reader or the model is about to allocate is compared with the
//! physical memory first: the answer is then an error naming the file or setting, not an abort
//! inside the allocator, a segfault inside libtorch or a machine swapping to a halt.
use std::fmt;
use std::str::FromStr;

/// Tests set this to play out a machine with this many bytes of memory.
pub const MEMORY_BYTES_ENV: &str = "SADAJEM_TEST_MEMORY_BYTES";

/// Bytes of physical memory (or the value of [`MEMORY_BYTES_ENV`]); `u64::MAX` where the
/// system does not say, so that nothing is refused on a guess.
pub fn physical_bytes() -> u64 {
    if let Some(v) = std::env::var_os(MEMORY_BYTES_ENV).and_then(|v| v.to_str()?.parse().ok()) {
        return v;
    }
    // SAFETY: sysconf only reads system constants.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages <= 0 || page <= 0 {
        return u64::MAX;
    }
    (pages as u64).saturating_mul(page as u64)
}

/// Whether `bytes` (an estimate, so a float: sizes multiplied from settings overflow u64) fit
/// in the physical memory.
pub fn fits(bytes: f64) -> bool {
    bytes.is_finite() && bytes <= physical_bytes() as f64
}

/// A size given on the command line: a number of bytes with an optional binary suffix
/// (`512M`, `16G`, `2T`; `K`, `M`, `G`, `T` are powers of 1024, a trailing `B` or `iB` is allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let t = lower.strip_suffix("ib").or_else(|| lower.strip_suffix('b')).unwrap_or(&lower);
        let (digits, shift) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c {
                    'k' => 10,
                    'm' => 20,
                    'g' => 30,
                    't' => 40,
                    _ => return Err(format!("`{s}`: expected a size such as 512M, 16G or 2T")),
                };
                (&t[..i], shift)
            }
            _ => (t, 0),
        };
        let n: u64 = digits.trim().parse().map_err(|_| format!("`{s}`: expected a size such as 512M, 16G or 2T"))?;
        n.checked_mul(1 << shift).map(ByteSize).ok_or_else(|| format!("`{s}`: too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human(self.0 as f64))
    }
}

/// `1.5 GiB`, `320 MiB`, `12 KiB`, `999 bytes`: for messages about memory (powers of 1024, as
/// [`ByteSize`] reads them).
pub fn human(bytes: f64) -> String {
    let units = [(1u64 << 50, "PiB"), (1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    if !bytes.is_finite() {
        return "more bytes than a u64 counts".into();
    }
    units
        .iter()
        .find(|(size, _)| bytes >= *size as f64)
        .map_or(format!("{bytes:.0} bytes"), |(size, unit)| format!("{:.1} {unit}", bytes / *size as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!("512".parse(), Ok(ByteSize(512)));
        assert_eq!("16G".parse(), Ok(ByteSize(16 << 30)));
        assert_eq!("2TiB".parse(), Ok(ByteSize(2 << 40)));
        assert_eq!("64mb".parse(), Ok(ByteSize(64 << 20)));
        assert!("1.5G".parse::<ByteSize>().is_err());
        assert!("12Q".parse::<ByteSize>().is_err());
        assert!("99999999999T".parse::<ByteSize>().unwrap_err().contains("too large"));
        assert_eq!(human(1.5 * (1u64 << 30) as f64), "1.5 GiB");
        assert_eq!(human(999.0), "999 bytes");
        assert_eq!(human(f64::INFINITY), "more bytes than a u64 counts");
    }

    #[test]
    fn this_machine_reports_its_memory() {
        let m = physical_bytes();
        assert!(m > 1 << 28, "{m}");
        assert!(fits(1e6) && !fits(f64::INFINITY) && !fits(1e30));
    }
}
