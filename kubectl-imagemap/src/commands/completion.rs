//! `kubectl imagemap completion bash|zsh|fish`

use clap::CommandFactory;

use crate::cli::{Cli, Shell};

/// Cobra's directive "no file completion": the candidates are all there is.
const NO_FILE_COMPLETION: u8 = 4;

/// The answer to kubectl's plugin completion (`__complete WORD... CURRENT`): the subcommands and
/// flags that start with the word being completed, at the subcommand the earlier words name,
/// one per line with its help after a tab, then `:4`.
pub fn complete(words: &[String]) -> String {
    let root = Cli::command();
    let (current, before) = words.split_last().map_or(("", &[][..]), |(last, rest)| (last.as_str(), rest));
    let mut command = &root;
    for word in before.iter().filter(|w| !w.starts_with('-')) {
        match command.find_subcommand(word) {
            Some(sub) => command = sub,
            None => break,
        }
    }
    let mut out = String::new();
    let mut candidate = |name: String, help: Option<String>| {
        if name.starts_with(current) {
            out.push_str(&name);
            if let Some(help) = help.filter(|h| !h.is_empty()) {
                out.push('\t');
                out.push_str(help.lines().next().unwrap_or_default());
            }
            out.push('\n');
        }
    };
    if !current.starts_with('-') {
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            candidate(sub.get_name().to_string(), sub.get_about().map(|a| a.to_string()));
        }
    }
    if current.starts_with('-') {
        let globals = root.get_arguments().filter(|a| a.is_global_set());
        for arg in command.get_arguments().chain(globals).filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                candidate(format!("--{long}"), arg.get_help().map(|h| h.to_string()));
            }
        }
    }
    out.push_str(&format!(":{NO_FILE_COMPLETION}\n"));
    out
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut cmd, "kubectl-imagemap", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kubectl_completion_offers_subcommands_then_their_flags() {
        let top = complete(&words(&[""]));
        assert!(top.lines().any(|l| l.starts_with("set-image\t")), "{top}");
        assert!(!top.contains("__complete"), "hidden: {top}");
        assert!(top.ends_with(":4\n"), "{top}");
        let se = complete(&words(&["se"]));
        let names: Vec<&str> = se.lines().map(|l| l.split('\t').next().unwrap_or_default()).collect();
        assert_eq!(names, ["set-image", ":4"]);
        let flags = complete(&words(&["set-image", "app", "--fr"]));
        assert!(flags.contains("--from-cluster") && flags.contains("--from-local"), "{flags}");
        let global = complete(&words(&["get", "--name"]));
        assert!(global.contains("--namespace"), "global flags too: {global}");
    }

    #[test]
    fn scripts_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = script(shell);
            assert!(s.contains("set-image") && s.contains("doctor"), "{shell:?}");
        }
    }
}
