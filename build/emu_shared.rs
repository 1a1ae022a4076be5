//! Registration of `__shared__` variables for the emulator's memory and race checks.
//!
//! The checks need to know, for every block, which bytes of shared memory its kernel declared
//! and under which name. A `__shared__` declaration cannot announce itself through the
//! qualifier macro (the name comes after it), so the emulator compiles a copy of each source
//! in which every statically sized `__shared__` declaration is followed, on the same line
//! (line numbers stay those of the original), by `EMU_SHARED_VAR(name)` for each declarator.
//! The macro is a statement: at run time, each thread reaching the declaration registers the
//! variable's address and size with the checker (a cheap no-op when checks are off).
//! `extern __shared__` arrays are left alone: they all alias the dynamic buffer, whose size the
//! launch gives.
//!
//! Only what kernels actually write is understood: `__shared__ [qualifiers] Type a[N][M], b;`
//! at function scope. Anything else (a `__shared__` inside a macro definition, a declaration
//! with an initialiser) fails the build with the file and line, rather than going unchecked.

/// `src` with `EMU_SHARED_VAR(name)` after every static `__shared__` declaration.
pub fn register_shared_vars(src: &str) -> Result<String, String> {
    let toks = tokens(src);
    let mut inserts: Vec<(usize, String)> = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        if t.kind == Kind::Directive && t.text(src).contains("__shared__") {
            return Err(format!(
                "line {}: `__shared__` inside a preprocessor directive cannot be checked by the \
                 emulator; declare shared memory in the function body",
                line_of(src, t.start)
            ));
        }
        if t.kind != Kind::Ident || t.text(src) != "__shared__" {
            continue;
        }
        if k > 0 && toks[k - 1].text(src) == "extern" {
            continue; // dynamic shared memory: the launch knows its size
        }
        let (names, end) =
            declarators(src, &toks[k + 1..]).map_err(|e| format!("line {}: {e}", line_of(src, t.start)))?;
        let calls: String = names.iter().map(|n| format!(" EMU_SHARED_VAR({n})")).collect();
        inserts.push((end, calls));
    }
    let mut out = String::with_capacity(src.len() + inserts.len() * 32);
    let mut at = 0;
    for (pos, text) in inserts {
        out.push_str(&src[at..pos]);
        out.push_str(&text);
        at = pos;
    }
    out.push_str(&src[at..]);
    Ok(out)
}

/// The declarator names of a declaration whose tokens start at `toks[0]` (just after
/// `__shared__`), and the byte offset just past its `;`.
fn declarators(src: &str, toks: &[Tok]) -> Result<(Vec<String>, usize), String> {
    let mut names = Vec::new();
    let mut depth = 0i32;
    let mut last_ident: Option<&str> = None;
    let mut named = false; // this declarator's name is taken (its array bounds follow)
    for t in toks {
        let text = t.text(src);
        match (t.kind, text) {
            (Kind::Punct, "(" | "[" | "<") => {
                if depth == 0 && text == "[" && !named {
                    names.push(last_ident.ok_or("an array without a name")?.to_owned());
                    named = true;
                }
                depth += 1;
            }
            (Kind::Punct, ")" | "]" | ">") => depth -= 1,
            (Kind::Punct, "," | ";") if depth == 0 => {
                if !named {
                    names.push(last_ident.ok_or("a declaration without a name")?.to_owned());
                }
                if text == ";" {
                    return Ok((names, t.end));
                }
                named = false;
                last_ident = None;
            }
            (Kind::Punct, "=" | "{") if depth == 0 => {
                return Err("a `__shared__` variable cannot have an initialiser".into());
            }
            (Kind::Ident, _) if depth == 0 => last_ident = Some(text),
            (Kind::Directive, _) => return Err("a preprocessor directive inside a declaration".into()),
            _ => {}
        }
    }
    Err("a `__shared__` declaration without its `;`".into())
}

fn line_of(src: &str, pos: usize) -> usize {
    src[..pos].bytes().filter(|&b| b == b'\n').count() + 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ident,
    Punct,
    /// A whole preprocessor directive, continuation lines included.
    Directive,
    /// Numbers, string and character literals.
    Literal,
}

#[derive(Clone, Copy, Debug)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Tok {
    fn text<'a>(&self, src: &'a str) -> &'a str {
        &src[self.start..self.end]
    }
}

/// C++ tokens of unpreprocessed source, comments and whitespace dropped.
fn tokens(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    let mut line_start = true; // only whitespace since the last newline
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i = (i + 2).min(b.len());
            continue;
        }
        let was_line_start = line_start;
        line_start = false;
        let kind = if c == b'#' && was_line_start {
            while i < b.len() && b[i] != b'\n' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = i.min(b.len());
            Kind::Directive
        } else if c == b'"' || c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            Kind::Literal
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            Kind::Ident
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'\'') {
                i += 1;
            }
            Kind::Literal
        } else {
            i += 1;
            Kind::Punct
        };
        toks.push(Tok { kind, start, end: i });
    }
    toks
}

#[cfg(test)]
mod tests {
    use super::register_shared_vars;

    #[test]
    fn every_declarator_is_registered_on_its_own_line() {
        let src = "__global__ void k() {\n    __shared__ __align__(16) float a[2][N + 4];\n    \
                   __shared__ int r[M], c[M], n;\n    __shared__ Smem<A, B> s;\n    x = 1;\n}\n";
        let out = register_shared_vars(src).unwrap();
        assert_eq!(
            out,
            "__global__ void k() {\n    __shared__ __align__(16) float a[2][N + 4]; EMU_SHARED_VAR(a)\n    \
             __shared__ int r[M], c[M], n; EMU_SHARED_VAR(r) EMU_SHARED_VAR(c) EMU_SHARED_VAR(n)\n    \
             __shared__ Smem<A, B> s; EMU_SHARED_VAR(s)\n    x = 1;\n}\n"
        );
    }

    #[test]
    fn dynamic_shared_comments_and_strings_are_left_alone() {
        let src = "extern __shared__ float dyn[];\n// __shared__ float no[3];\n/* __shared__ x; */\n\
                   const char* s = \"__shared__ y;\";\n";
        assert_eq!(register_shared_vars(src).unwrap(), src);
    }

    #[test]
    fn what_cannot_be_checked_fails_with_its_line() {
        for (src, why) in [
            (
                "int a;\n__shared__ float x = 1.0f;\n",
                "line 2: a `__shared__` variable cannot have an initialiser",
            ),
            ("#define S __shared__ float x[4];\n", "line 1: `__shared__` inside a preprocessor directive"),
            ("void f() { __shared__ float x[4] }", "line 1: a `__shared__` declaration without its `;`"),
        ] {
            let err = register_shared_vars(src).unwrap_err();
            assert!(err.starts_with(why), "{err}");
        }
    }
}
