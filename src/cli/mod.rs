//! The `stargan` command line: one module per subcommand (train's flags live in `args`).

pub mod align;
pub mod args;
pub mod bench;
pub mod eval;
pub mod serve;
pub mod synth;
pub mod test;
pub mod train;
pub mod translate;
mod values;

pub use args::RunArgs;

/// A library message with its settings shown as this command line's flags: the library names a
/// setting by its key in backquotes (`` `batch_size` ``), the CLI by its flag (`--batch-size`).
/// Backquoted words that are not settings (`latest`, a label name) stay as they are.
pub fn with_flag_names(message: &str) -> String {
    let keys = crate::config::TrainConfig::keys();
    let extra = [
        "max_images",
        "classifier_iters",
        "classifier",
        "min_face_size",
        "align",
        "face",
        "face_model",
        "token",
        "public",
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('`') {
        let Some(len) = rest[start + 1..].find('`') else { break };
        let word = &rest[start + 1..start + 1 + len];
        out.push_str(&rest[..start]);
        if keys.contains(word) || extra.contains(&word) {
            out.push_str("--");
            out.push_str(&word.replace('_', "-"));
        } else {
            out.push_str(&rest[start..start + len + 2]);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_become_flags_and_other_words_stay() {
        let m = "`batch_size` 64 exceeds 16; `resume_iters` takes `latest`; unknown attribute `Male`; `x";
        assert_eq!(
            super::with_flag_names(m),
            "--batch-size 64 exceeds 16; --resume-iters takes `latest`; unknown attribute `Male`; `x"
        );
    }
}
