//! Finds the kernel entry points of one kernel module's source without a preprocessor: when
//! the build has no nvcc there is nothing to preprocess with, yet the kernel → module table
//! must be known at build time. The scanner reads exactly the two forms `kernels/*.cu` uses
//! and rejects everything else it meets around a kernel, so a new form fails the build
//! instead of silently dropping a kernel:
//!
//! * `extern "C" __global__ void [__launch_bounds__(...)] name(` at top level;
//! * the same inside a function-like macro, `#define DN_X_KERNELS(T, SUFFIX) ...`, whose kernel
//!   names may paste parameters (`name_##SUFFIX`), instantiated at top level with one token per
//!   argument, `DN_X_KERNELS(float, f32)`.
//!
//! Conditional compilation (`#if` & co.) is allowed around code that defines no kernel (the
//! inline-PTX wrappers of `mma.cuh`): the scanner cannot evaluate a condition, so a
//! `__global__`, a kernel macro's definition or an instantiation inside one is rejected.
//!
//! Rejected: a `__global__` not in that shape, a kernel inside conditional compilation,
//! an unbalanced `#if`/`#endif`, `#undef` of a kernel macro, a macro that defines kernels but is never instantiated or is
//! used inside another macro, an instantiation with the wrong number of arguments, and the
//! same kernel name twice. Used by `build/ptx.rs`; compiled into the library's unit tests too
//! (`src/kernels.rs`), which exercise it.

use std::collections::HashMap;

/// The kernel entry names `source` defines, in source order, or why they cannot be read.
pub fn scan(source: &str) -> Result<Vec<String>, String> {
    let mut macros: HashMap<String, KernelMacro> = HashMap::new();
    let mut top: Vec<Token> = Vec::new();
    // Open `#if`s: inside one, nothing may define or instantiate a kernel.
    let mut depth = 0usize;
    for (line_no, line) in logical_lines(&strip_comments(source)?) {
        let trimmed = line.trim_start();
        let Some(directive) = trimmed.strip_prefix('#') else {
            let tokens = tokenize(&line, line_no)?;
            if depth > 0
                && let Some(t) =
                    tokens.iter().find(|t| t.text == "__global__" || macros.contains_key(&t.text))
            {
                return Err(format!(
                    "line {line_no}: `{}` inside conditional compilation: the kernel scanner cannot \
                     evaluate the condition, so kernels must be unconditional",
                    t.text
                ));
            }
            top.extend(tokens);
            continue;
        };
        let directive = directive.trim_start();
        let word: String = directive.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        match word.as_str() {
            "define" => {
                if depth > 0 && directive.contains("__global__") {
                    return Err(format!(
                        "line {line_no}: a kernel macro defined inside conditional compilation: \
                         the kernel scanner cannot evaluate the condition"
                    ));
                }
                let defined = parse_define(directive["define".len()..].trim_start(), line_no, &|t| {
                    macros.contains_key(t)
                })?;
                if let Some((name, m)) = defined {
                    macros.insert(name, m);
                }
            }
            "undef" => {
                // Instantiations are read after all definitions, so an #undef would be seen
                // out of order.
                let name = directive["undef".len()..].trim();
                if macros.contains_key(name) {
                    return Err(format!(
                        "line {line_no}: `#undef {name}`: the kernel scanner does not support it"
                    ));
                }
            }
            "if" | "ifdef" | "ifndef" => depth += 1,
            "elif" | "else" | "endif" if depth == 0 => {
                return Err(format!("line {line_no}: `#{word}` without an open `#if`"));
            }
            "endif" => depth -= 1,
            "elif" | "else" => {}
            // #include, #pragma and the like cannot define kernels.
            _ => {}
        }
    }

    if depth > 0 {
        return Err(format!("{depth} `#if` never closed by `#endif`"));
    }
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while i < top.len() {
        if top[i].text == "__global__" {
            let (name, next) = kernel_at(&top, i, &HashMap::new())?;
            names.push(name);
            i = next;
        } else if let Some(m) = macros.get_mut(&top[i].text) {
            let (args, next) = macro_args(&top, i)?;
            if args.len() != m.params.len() {
                return Err(format!(
                    "line {}: `{}` takes {} arguments, got {}",
                    top[i].line,
                    top[i].text,
                    m.params.len(),
                    args.len()
                ));
            }
            let bindings: HashMap<&str, &str> =
                m.params.iter().map(String::as_str).zip(args.iter().map(String::as_str)).collect();
            let mut j = 0;
            while j < m.body.len() {
                if m.body[j].text == "__global__" {
                    let (name, after) = kernel_at(&m.body, j, &bindings)?;
                    names.push(name);
                    j = after;
                } else {
                    j += 1;
                }
            }
            m.used = true;
            i = next;
        } else {
            i += 1;
        }
    }
    if let Some((name, m)) = macros.iter().find(|(_, m)| !m.used) {
        return Err(format!("line {}: kernel macro `{name}` is never instantiated", m.line));
    }
    let mut sorted = names.clone();
    sorted.sort();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("kernel `{}` is defined twice", w[0]));
    }
    Ok(names)
}

/// A function-like macro whose body defines kernels.
struct KernelMacro {
    params: Vec<String>,
    body: Vec<Token>,
    line: usize,
    used: bool,
}

#[derive(Clone, Debug)]
struct Token {
    text: String,
    line: usize,
}

/// `#define` after the keyword: `Some` for a macro that defines kernels, `None` for any other.
/// A body that uses a kernel macro (`is_kernel_macro`) is rejected: its kernels would be missed.
fn parse_define(
    rest: &str,
    line: usize,
    is_kernel_macro: &dyn Fn(&str) -> bool,
) -> Result<Option<(String, KernelMacro)>, String> {
    let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    let after = &rest[name.len()..];
    let (params, body) = match after.strip_prefix('(') {
        // Function-like only when `(` follows the name directly, as in the preprocessor.
        Some(list) => {
            let close =
                list.find(')').ok_or_else(|| format!("line {line}: `{name}`: unclosed parameter list"))?;
            let params: Vec<String> =
                list[..close].split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
            (Some(params), &list[close + 1..])
        }
        None => (None, after),
    };
    let body = tokenize(body, line)?;
    if let Some(user) = body.iter().find(|t| is_kernel_macro(&t.text)) {
        return Err(format!(
            "line {line}: macro `{name}` uses kernel macro `{}`; nested kernel macros are not supported",
            user.text
        ));
    }
    if !body.iter().any(|t| t.text == "__global__") {
        return Ok(None);
    }
    let Some(params) = params else {
        return Err(format!(
            "line {line}: object-like macro `{name}` defines a kernel; use a function-like one"
        ));
    };
    if let Some(p) = params.iter().find(|p| !is_identifier(p)) {
        return Err(format!("line {line}: `{name}`: parameter `{p}` is not an identifier"));
    }
    Ok(Some((name, KernelMacro { params, body, line, used: false })))
}

/// The kernel whose `__global__` is `tokens[at]`, its name with `bindings` substituted and
/// pasted, and the index after the `(` that follows the name.
fn kernel_at(tokens: &[Token], at: usize, bindings: &HashMap<&str, &str>) -> Result<(String, usize), String> {
    let line = tokens[at].line;
    let text = |i: usize| tokens.get(i).map_or("", |t| t.text.as_str());
    let shape = "expected `extern \"C\" __global__ void [__launch_bounds__(...)] name(`";
    if at < 2 || text(at - 2) != "extern" || text(at - 1) != "\"C\"" {
        return Err(format!("line {line}: `__global__` without `extern \"C\"` before it; {shape}"));
    }
    if text(at + 1) != "void" {
        return Err(format!("line {line}: {shape}"));
    }
    let mut i = at + 2;
    if text(i) == "__launch_bounds__" {
        i = skip_parens(tokens, i + 1)
            .ok_or_else(|| format!("line {line}: unbalanced `__launch_bounds__(`"))?;
    }
    let mut name = String::new();
    loop {
        let part = text(i);
        if !is_identifier(part) {
            return Err(format!("line {line}: kernel name expected, found `{part}`; {shape}"));
        }
        name.push_str(bindings.get(part).copied().unwrap_or(part));
        i += 1;
        if text(i) != "##" {
            break;
        }
        i += 1;
    }
    if text(i) != "(" {
        return Err(format!("line {line}: `(` expected after kernel `{name}`; {shape}"));
    }
    if !is_identifier(&name) {
        return Err(format!("line {line}: pasted kernel name `{name}` is not an identifier"));
    }
    Ok((name, i + 1))
}

/// The index after the `)` matching the `(` at `tokens[open]`.
fn skip_parens(tokens: &[Token], open: usize) -> Option<usize> {
    if tokens.get(open)?.text != "(" {
        return None;
    }
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.text.as_str() {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// The arguments of the macro use at `tokens[at]` (one token each) and the index after `)`.
fn macro_args(tokens: &[Token], at: usize) -> Result<(Vec<String>, usize), String> {
    let (name, line) = (&tokens[at].text, tokens[at].line);
    let end = skip_parens(tokens, at + 1)
        .ok_or_else(|| format!("line {line}: kernel macro `{name}` used without a closed argument list"))?;
    let inner = &tokens[at + 2..end - 1];
    let mut args = Vec::new();
    for arg in inner.split(|t| t.text == ",") {
        match arg {
            [one] if is_identifier(&one.text) => args.push(one.text.clone()),
            _ => {
                let text: Vec<&str> = arg.iter().map(|t| t.text.as_str()).collect();
                return Err(format!(
                    "line {line}: `{name}`: argument `{}` is not a single identifier",
                    text.join(" ")
                ));
            }
        }
    }
    Ok((args, end))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `source` with comments replaced by a space (newlines kept, so line numbers hold).
/// Backslash continuations inside comments are honoured, so a commented-out line stays out.
fn strip_comments(source: &str) -> Result<String, String> {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                // A line comment ending in a backslash continues on the next line (lines are
                // spliced before comments are removed); the newlines are kept for line numbers.
                let mut prev = c;
                while let Some(&d) = chars.peek() {
                    if d == '\n' && prev != '\\' {
                        break;
                    }
                    if d == '\n' {
                        line += 1;
                        out.push('\n');
                    }
                    prev = d;
                    chars.next();
                }
                out.push(' ');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let start = line;
                let mut closed = false;
                while let Some(c) = chars.next() {
                    if c == '\n' {
                        line += 1;
                        out.push('\n');
                    } else if c == '*' && chars.peek() == Some(&'/') {
                        chars.next();
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(format!("line {start}: unterminated comment"));
                }
                out.push(' ');
            }
            '"' | '\'' => {
                out.push(c);
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        out.extend(chars.next());
                    } else if d == c {
                        break;
                    } else if d == '\n' {
                        return Err(format!("line {line}: unterminated literal"));
                    }
                }
            }
            '\n' => {
                line += 1;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Lines with backslash continuations joined, each with the number of its first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let (start, mut acc) = current.take().unwrap_or((i + 1, String::new()));
        match raw.trim_end().strip_suffix('\\') {
            Some(part) => {
                acc.push_str(part);
                acc.push(' ');
                current = Some((start, acc));
            }
            None => {
                acc.push_str(raw);
                lines.push((start, acc));
            }
        }
    }
    lines.extend(current);
    lines
}

/// Identifiers, numbers, string and character literals, `##`, and single punctuation characters.
fn tokenize(text: &str, line: usize) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        } else if c.is_ascii_alphanumeric() || c == '_' {
            // Numbers are read like identifiers (`0x7f`, `1e-5f` splits at `-`): they never
            // matter to the scanner, only that they are not punctuation.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
        } else if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            if i >= chars.len() {
                return Err(format!("line {line}: unterminated literal"));
            }
            i += 1;
        } else if c == '#' && chars.get(i + 1) == Some(&'#') {
            i += 2;
        } else {
            i += 1;
        }
        tokens.push(Token { text: chars[start..i].iter().collect(), line });
    }
    Ok(tokens)
}
