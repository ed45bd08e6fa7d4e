//! One module per subcommand. Each `run` writes its result to the `out` it is given (standard
//! output; streaming commands such as `get --watch` and `doctor` write as they go) and returns
//! errors, which go to stderr. The renderers return strings, so output is tested without a
//! terminal.

pub mod build;
pub mod completion;
pub mod create;
pub mod delete;
pub mod describe;
pub mod doctor;
pub mod explain;
pub mod get;
pub mod inject;
pub mod policy;
pub mod registry;
pub mod rollout;
pub mod set_image;
pub mod version;

use anyhow::{bail, Result};
use imagemap_core::reference::Reference;

/// Writes `text` to `out` (a command's whole result).
pub fn write(out: &mut dyn std::io::Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Validates an image reference given on the command line, naming the flag.
pub fn validate_reference(flag: &str, value: &str) -> Result<()> {
    if let Err(e) = Reference::parse(value) {
        bail!("invalid {flag} {value:?}: {e}");
    }
    Ok(())
}

/// `--command ""` or `--args ""` alone means "clear": an empty list.
pub fn override_list(words: &Option<Vec<String>>) -> Option<Vec<String>> {
    words.as_ref().map(|w| if w.len() == 1 && w[0].is_empty() { Vec::new() } else { w.clone() })
}
