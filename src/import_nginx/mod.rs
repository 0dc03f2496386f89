//! `gateway import-nginx FILE [-o OUT]`: an nginx configuration (with its includes) as
//! the gateway's config, a comment at each directive without an equivalent, and a
//! summary on stderr; it succeeds when the result passes `gateway check`.

mod parse;
mod translate;

use std::path::Path;

/// What `import-nginx` made of `input`: the config text, the summary for stderr, and
/// whether the text passes `gateway check` (as a file at `output`'s place).
pub struct Imported {
    pub toml: String,
    pub summary: String,
    pub valid: bool,
}

pub fn import(input: &Path, output: &Path) -> Result<Imported, String> {
    let directives = parse::file(input)?;
    let translation = translate::translate(&directives);
    let mut summary = format!(
        "import-nginx: {} directives translated, {} not",
        translation.translated,
        translation.untranslated.len()
    );
    summary.push_str(if translation.untranslated.is_empty() {
        "\n"
    } else {
        ":\n"
    });
    for line in &translation.untranslated {
        summary.push_str(&format!("  {line}\n"));
    }
    let valid = match crate::config::parse(output, &translation.toml) {
        Ok(_) => {
            summary.push_str("the result passes gateway check\n");
            true
        }
        Err(e) => {
            summary.push_str(&format!(
                "the result does not pass gateway check yet:\n{e}\n"
            ));
            false
        }
    };
    Ok(Imported {
        toml: translation.toml,
        summary,
        valid,
    })
}
