//! nginx's configuration syntax: directives (a name and its arguments, ended by `;`) and
//! blocks (`{ … }`), `#` comments, single- or double-quoted arguments with `\` escapes,
//! and `include FILE` (a glob, relative to the including file's directory) read in place.
//! No crate parses it (the ones on crates.io are unmaintained or partial), and it is a
//! small grammar.

use std::path::{Path, PathBuf};

/// One directive, where it was written, and its block's directives (a block directive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub block: Option<Vec<Directive>>,
    /// `FILE:LINE`.
    pub at: String,
}

/// Includes nest at most this deep (a file including itself is an error, not a loop).
const MAX_INCLUDE_DEPTH: usize = 16;

/// The directives of `path`, its includes read in place.
pub fn file(path: &Path) -> Result<Vec<Directive>, String> {
    read(path, 0)
}

fn read(path: &Path, depth: usize) -> Result<Vec<Directive>, String> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(format!("{}: includes nest too deep", path.display()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let tokens = tokens(&text, &path.display().to_string())?;
    let mut at = 0;
    let directives = block(&tokens, &mut at, false)?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    expand(directives, &dir, depth)
}

/// Replaces every `include` with the directives of the files it names.
fn expand(directives: Vec<Directive>, dir: &Path, depth: usize) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    for mut d in directives {
        if d.name == "include" && d.block.is_none() && d.args.len() == 1 {
            for file in glob(&dir.join(&d.args[0]))? {
                out.extend(read(&file, depth + 1)?);
            }
            continue;
        }
        if let Some(inner) = d.block.take() {
            d.block = Some(expand(inner, dir, depth)?);
        }
        out.push(d);
    }
    Ok(out)
}

/// The files a pattern names: `*` in the last component matches any name (nginx's
/// `include sites-enabled/*;`), in name order; without `*`, the file itself.
fn glob(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains('*') {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let (before, after) = name.split_once('*').unwrap_or((&name, ""));
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("include {}: {e}", pattern.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(before) && n.ends_with(after) && n.len() >= before.len() + after.len()
        })
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String, usize),
    Semicolon(usize),
    Open(usize),
    Close(usize),
}

struct Tokens {
    list: Vec<Token>,
    file: String,
}

fn tokens(text: &str, file: &str) -> Result<Tokens, String> {
    let mut list = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            ';' => list.push(Token::Semicolon(line)),
            '{' => list.push(Token::Open(line)),
            '}' => list.push(Token::Close(line)),
            '"' | '\'' => {
                let (quote, start) = (c, line);
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("{file}:{start}: a quote is not closed")),
                        Some('\\') => match chars.next() {
                            Some(n) if n == quote || n == '\\' => word.push(n),
                            Some(n) => {
                                word.push('\\');
                                word.push(n);
                            }
                            None => return Err(format!("{file}:{start}: a quote is not closed")),
                        },
                        Some(c) if c == quote => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            word.push(c);
                        }
                    }
                }
                list.push(Token::Word(word, start));
            }
            c => {
                let mut word = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || n == ';' || n == '{' || n == '}' {
                        break;
                    }
                    // `${var}` keeps its braces inside a word.
                    if n == '$' {
                        word.push(n);
                        chars.next();
                        if chars.peek() == Some(&'{') {
                            for c in chars.by_ref() {
                                word.push(c);
                                if c == '}' {
                                    break;
                                }
                            }
                        }
                        continue;
                    }
                    word.push(n);
                    chars.next();
                }
                list.push(Token::Word(word, line));
            }
        }
    }
    Ok(Tokens {
        list,
        file: file.to_string(),
    })
}

fn block(tokens: &Tokens, at: &mut usize, nested: bool) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    let file = &tokens.file;
    loop {
        let Some(token) = tokens.list.get(*at) else {
            if nested {
                return Err(format!("{file}: a block is not closed (missing \"}}\")"));
            }
            return Ok(out);
        };
        *at += 1;
        let (name, line) = match token {
            Token::Close(line) if nested => return Ok(out),
            Token::Close(line) => return Err(format!("{file}:{line}: unexpected \"}}\"")),
            Token::Semicolon(line) | Token::Open(line) => {
                return Err(format!("{file}:{line}: a directive name is missing"))
            }
            Token::Word(name, line) => (name.clone(), *line),
        };
        let mut args = Vec::new();
        loop {
            match tokens.list.get(*at) {
                Some(Token::Word(w, _)) => {
                    args.push(w.clone());
                    *at += 1;
                }
                Some(Token::Semicolon(_)) => {
                    *at += 1;
                    out.push(Directive {
                        name,
                        args,
                        block: None,
                        at: format!("{file}:{line}"),
                    });
                    break;
                }
                Some(Token::Open(_)) => {
                    *at += 1;
                    let inner = block(tokens, at, true)?;
                    out.push(Directive {
                        name,
                        args,
                        block: Some(inner),
                        at: format!("{file}:{line}"),
                    });
                    break;
                }
                Some(Token::Close(l)) => {
                    return Err(format!("{file}:{l}: \"{name}\" is not ended by \";\""))
                }
                None => return Err(format!("{file}:{line}: \"{name}\" is not ended by \";\"")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Vec<Directive>, String> {
        let tokens = tokens(text, "t.conf")?;
        block(&tokens, &mut 0, false)
    }

    #[test]
    fn directives_blocks_quotes_comments_and_lines() {
        let d = parse(
            "# a comment\nhttp {\n  upstream app { server 127.0.0.1:3000 weight=2; }\n  \
             server { listen 80; location ~* \"\\.(js|css)$\" { add_header X-A 'b c'; } }\n}\n",
        )
        .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].at, "t.conf:2");
        let http = d[0].block.as_ref().unwrap();
        assert_eq!(http[0].args, ["app"]);
        assert_eq!(
            http[0].block.as_ref().unwrap()[0].args,
            ["127.0.0.1:3000", "weight=2"]
        );
        let server = http[1].block.as_ref().unwrap();
        assert_eq!(server[1].args, ["~*", "\\.(js|css)$"]);
        let location = server[1].block.as_ref().unwrap();
        assert_eq!(location[0].args, ["X-A", "b c"]);
        assert_eq!(location[0].at, "t.conf:4");
    }

    #[test]
    fn broken_files_say_where() {
        assert!(parse("server { listen 80; ")
            .unwrap_err()
            .contains("not closed"));
        assert!(parse("listen 80 }").unwrap_err().contains("t.conf:1"));
        assert!(parse("return 200 \"open").unwrap_err().contains("quote"));
        assert!(parse("}").unwrap_err().contains("unexpected"));
    }

    #[test]
    fn includes_are_read_in_place_with_globs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sites")).unwrap();
        std::fs::write(dir.path().join("sites/a.conf"), "server { listen 81; }").unwrap();
        std::fs::write(dir.path().join("sites/b.conf"), "server { listen 82; }").unwrap();
        std::fs::write(dir.path().join("loop.conf"), "include loop.conf;").unwrap();
        let main = dir.path().join("nginx.conf");
        std::fs::write(&main, "http { include sites/*.conf; }").unwrap();
        let d = file(&main).unwrap();
        let servers = d[0].block.as_ref().unwrap();
        assert_eq!(servers.len(), 2);
        assert!(servers[1].at.ends_with("b.conf:1"));
        assert!(file(&dir.path().join("loop.conf"))
            .unwrap_err()
            .contains("too deep"));
    }

    proptest! {
        /// Any text is parsed or refused with a place, never a panic.
        #[test]
        fn any_text_is_read_or_refused(text in "[ -~\n\t]{0,200}") {
            if let Err(e) = parse(&text) {
                prop_assert!(e.starts_with("t.conf"), "{}", e);
            }
        }
    }
}
