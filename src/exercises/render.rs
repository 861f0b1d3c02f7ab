//! Text, Markdown and LaTeX renderings of the exercise entries.

use super::Entry;
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Latex,
}

fn status(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "FAILED"
    }
}

pub fn render(entries: &[Entry], format: Format) -> Result<String> {
    Ok(match format {
        Format::Text => text(entries),
        Format::Markdown => markdown(entries),
        Format::Latex => latex(entries),
    })
}

fn text(entries: &[Entry]) -> String {
    let mut s = String::new();
    for e in entries {
        s.push_str(&format!("[{}] {}  ({})\n", e.id, e.title, status(e.ok)));
        for d in &e.derivation {
            s.push_str(&format!("    {d}\n"));
        }
        for l in &e.summary {
            s.push_str(&format!("  → {l}\n"));
        }
        if let Some((name, _)) = &e.artefact {
            s.push_str(&format!("  (artefact: {name}; --json includes its text)\n"));
        }
        s.push('\n');
    }
    let failed = entries.iter().filter(|e| !e.ok).count();
    s.push_str(&format!(
        "{} passed, {} failed\n",
        entries.len() - failed,
        failed
    ));
    s
}

fn markdown(entries: &[Entry]) -> String {
    let mut s = String::from("# nabla reproduce — the assignment's exercises\n\n");
    for e in entries {
        s.push_str(&format!("## {} {} — {}\n\n", e.id, e.title, status(e.ok)));
        for d in &e.derivation {
            s.push_str(&format!("> {d}\n>\n"));
        }
        s.push('\n');
        for l in &e.summary {
            s.push_str(&format!("- {l}\n"));
        }
        if let Some((name, body)) = &e.artefact {
            s.push_str(&format!("\n`{name}`:\n\n```dot\n{body}```\n"));
        }
        s.push('\n');
    }
    s
}

/// Unicode characters the entries use, as LaTeX (declared so pdflatex accepts the UTF-8 input).
const UNICODE: &[(char, &str)] = &[
    ('σ', "$\\sigma$"),
    ('λ', "$\\lambda$"),
    ('Γ', "$\\Gamma$"),
    ('Φ', "$\\Phi$"),
    ('φ', "$\\varphi$"),
    ('ε', "$\\varepsilon$"),
    ('η', "$\\eta$"),
    ('μ', "$\\mu$"),
    ('ρ', "$\\rho$"),
    ('θ', "$\\theta$"),
    ('α', "$\\alpha$"),
    ('β', "$\\beta$"),
    ('γ', "$\\gamma$"),
    ('δ', "$\\delta$"),
    ('Σ', "$\\Sigma$"),
    ('∑', "$\\sum$"),
    ('∇', "$\\nabla$"),
    ('∂', "$\\partial$"),
    ('‖', "$\\|$"),
    ('⊙', "$\\odot$"),
    ('·', "$\\cdot$"),
    ('×', "$\\times$"),
    ('−', "$-$"),
    ('–', "--"),
    ('—', "---"),
    ('→', "$\\rightarrow$"),
    ('←', "$\\leftarrow$"),
    ('≤', "$\\le$"),
    ('≥', "$\\ge$"),
    ('≈', "$\\approx$"),
    ('≠', "$\\neq$"),
    ('∈', "$\\in$"),
    ('ᵀ', "$^{\\top}$"),
    ('⁺', "$^{+}$"),
    ('⁻', "$^{-}$"),
    ('¹', "$^{1}$"),
    ('²', "$^{2}$"),
    ('³', "$^{3}$"),
    ('⁰', "$^{0}$"),
    ('₀', "$_{0}$"),
    ('₁', "$_{1}$"),
    ('₂', "$_{2}$"),
    ('√', "$\\surd$"),
    ('∞', "$\\infty$"),
    ('±', "$\\pm$"),
    ('⟨', "$\\langle$"),
    ('⟩', "$\\rangle$"),
    ('∘', "$\\circ$"),
    ('…', "\\dots{}"),
    ('’', "'"),
    ('✓', "ok"),
    ('¼', "$\\frac{1}{4}$"),
    ('½', "$\\frac{1}{2}$"),
    ('ï', "\\\"{\\i}"),
    ('÷', "$\\div$"),
    ('⁽', "$^{(}$"),
    ('⁾', "$^{)}$"),
    ('⇒', "$\\Rightarrow$"),
    ('Δ', "$\\Delta$"),
    ('ĝ', "$\\hat{g}$"),
];

fn tex_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\textbackslash{}"),
            '{' => o.push_str("\\{"),
            '}' => o.push_str("\\}"),
            '#' | '$' | '%' | '&' | '_' => {
                o.push('\\');
                o.push(c)
            }
            '^' => o.push_str("\\^{}"),
            '~' => o.push_str("\\~{}"),
            '<' => o.push_str("\\textless{}"),
            '>' => o.push_str("\\textgreater{}"),
            '|' => o.push_str("\\textbar{}"),
            c if c.is_ascii() => o.push(c),
            c => match UNICODE.iter().find(|(u, _)| *u == c) {
                Some((_, t)) => o.push_str(t),
                None => o.push('?'),
            },
        }
    }
    o
}

/// Superscript and subscript characters: (character, what it stands for, is superscript).
const SCRIPTS: &[(char, &str, bool)] = &[
    ('ᵀ', "\\top", true),
    ('⁺', "+", true),
    ('⁻', "-", true),
    ('⁰', "0", true),
    ('¹', "1", true),
    ('²', "2", true),
    ('³', "3", true),
    ('⁽', "(", true),
    ('⁾', ")", true),
    ('₀', "0", false),
    ('₁', "1", false),
    ('₂', "2", false),
];

/// A non-ASCII character inside math mode: the text-mode form of [`UNICODE`] without its `$`s,
/// or a math equivalent of the text-only ones.
fn math_char(c: char) -> Option<&'static str> {
    let t = UNICODE.iter().find(|(u, _)| *u == c)?.1;
    Some(match c {
        '–' => "-",
        '—' => "-\\!\\!-",
        '…' => "\\dots",
        '’' => "'",
        '✓' => "\\checkmark",
        'ï' => "\\ddot{\\imath}",
        _ => t.strip_prefix('$')?.strip_suffix('$')?,
    })
}

/// Names typeset upright as operators in math.
const OPERATORS: &[&str] = &[
    "diag", "softmax", "max", "min", "exp", "log", "sup", "row", "Var",
];

/// Whether a word of the plain-text derivations is mathematics: it has a script, a brace, a
/// relation or operator, a math symbol, or is a single-letter variable (not the words "a", "A",
/// "I"); `None` for words of digits and punctuation only, which follow their neighbours.
fn is_math_word(w: &str) -> Option<bool> {
    let core = w.trim_matches(|c: char| "()[],.;:".contains(c));
    // A snake_case name of the code (`masked_batch_norm`) is text, not subscripts.
    let parts: Vec<&str> = core.split('_').collect();
    if parts.len() > 1
        && parts
            .iter()
            .all(|p| p.len() >= 2 && p.chars().all(|c| c.is_ascii_lowercase()))
    {
        return Some(false);
    }
    if w.chars().any(|c| {
        "_^{}=+<>".contains(c)
            || (!c.is_ascii() && UNICODE.iter().any(|(u, t)| *u == c && t.starts_with('$')))
    }) {
        return Some(true);
    }
    let mut letters = core.chars();
    match (letters.next(), letters.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => Some(!"aAI".contains(c)),
        _ if w.chars().all(|c| !c.is_alphabetic()) => None,
        _ => Some(false),
    }
}

/// Whether `o` ends with a `_{…}` (or `^{…}` for `c = '^'`) group.
fn script_open(o: &str, c: char) -> bool {
    let mut depth = 0;
    for (i, ch) in o.char_indices().rev() {
        match ch {
            '}' => depth += 1,
            '{' => {
                depth -= 1;
                if depth == 0 {
                    return o[..i].ends_with(c);
                }
            }
            _ if depth == 0 => return false,
            _ => {}
        }
    }
    false
}

/// One run of math words as LaTeX math (without the `$`s): scripts braced (`x_ij` → `x_{ij}`),
/// Unicode symbols as commands, runs of Unicode superscripts merged (`⁽⁰⁾` → `^{(0)}`), words of
/// three or more letters upright.
fn tex_math(s: &str) -> String {
    let cs: Vec<char> = s.chars().collect();
    let mut o = String::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if let Some(&(_, _, sup)) = SCRIPTS.iter().find(|(u, _, _)| *u == c) {
            o.push_str(if sup { "^{" } else { "_{" });
            while let Some(&(_, t, s2)) = SCRIPTS.iter().find(|(u, _, _)| Some(u) == cs.get(i)) {
                if s2 != sup {
                    break;
                }
                o.push_str(t);
                i += 1;
            }
            o.push('}');
            continue;
        }
        match c {
            // A second script of the same kind (`a_b_c`) gets an empty base, never a
            // "Double subscript" error.
            '_' | '^' if i > 0 && o.ends_with('}') && script_open(&o, c) => {
                o.push_str("{}");
                continue;
            }
            '_' | '^' if cs.get(i + 1) != Some(&'{') => {
                let n = cs[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .count();
                if n == 0 {
                    o.push_str(if c == '_' { "\\_" } else { "\\^{}" });
                } else {
                    o.push(c);
                    o.push('{');
                    o.extend(&cs[i + 1..i + 1 + n]);
                    o.push('}');
                }
                i += 1 + n;
                continue;
            }
            c if c.is_ascii_alphabetic() => {
                let n = cs[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .count();
                let w: String = cs[i..i + n].iter().collect();
                if OPERATORS.contains(&w.as_str()) {
                    o.push_str(&format!("\\operatorname{{{w}}}"));
                } else if n >= 3 {
                    o.push_str(&format!("\\mathrm{{{w}}}"));
                } else {
                    o.push_str(&w);
                }
                i += n;
                continue;
            }
            '%' | '#' | '&' | '$' => {
                o.push('\\');
                o.push(c);
            }
            '~' => o.push_str("{\\sim}"),
            '\\' => o.push_str("{\\backslash}"),
            '"' => o.push_str("\\text{\"}"),
            c if c.is_ascii() => o.push(c),
            // Unbraced, so relations and operators keep their spacing (`a \le b`); a space
            // ends a command name before a following letter.
            c => match math_char(c) {
                Some(t) => {
                    o.push_str(t);
                    if t.ends_with(|c: char| c.is_ascii_alphabetic()) {
                        o.push(' ');
                    }
                }
                None => o.push('?'),
            },
        }
        i += 1;
    }
    o
}

/// One line of the plain-text derivations as LaTeX: runs of math words in `$…$` (a brace opened
/// in one word keeps the run open until it closes), the prose escaped.
fn tex_line(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut kind: Vec<Option<bool>> = Vec::with_capacity(words.len());
    let mut depth = 0i32;
    for w in &words {
        // Two spaces (an empty word) separate formulas: they end a run.
        kind.push(if depth > 0 {
            Some(true)
        } else if w.is_empty() {
            Some(false)
        } else {
            is_math_word(w)
        });
        depth += w.matches('{').count() as i32 - w.matches('}').count() as i32;
    }
    // Digits and punctuation belong to the math between two math words, or right after a
    // relation or operator (`= 0`, `≤ 1e-6`).
    let ends_in_operator = |w: &str| w.chars().last().is_some_and(|c| "=+<>−·×≤≥≈≠⇒".contains(c));
    let math: Vec<bool> = (0..words.len())
        .map(|i| {
            kind[i].unwrap_or_else(|| {
                let prev = kind[..i].iter().rev().find_map(|k| *k);
                let next = kind[i + 1..].iter().find_map(|k| *k);
                (prev == Some(true) && next == Some(true))
                    || (i > 0 && kind[i - 1] == Some(true) && ends_in_operator(words[i - 1]))
            })
        })
        .collect();
    let mut o = String::new();
    let mut i = 0;
    while i < words.len() {
        if i > 0 {
            o.push(' ');
        }
        if math[i] && !words[i].is_empty() {
            let n = (i..words.len()).take_while(|&j| math[j]).count();
            let mut run = words[i..i + n].join(" ");
            let open = run.matches('{').count() as i32 - run.matches('}').count() as i32;
            run.extend(std::iter::repeat_n('}', open.max(0) as usize));
            o.push('$');
            o.push_str(tex_math(&run).trim_end());
            o.push('$');
            i += n;
        } else {
            o.push_str(&tex_escape(words[i]));
            i += 1;
        }
    }
    o
}

/// A complete LaTeX document (pdflatex, packages of texlive-latex-base only): one section per
/// exercise, its derivation and results with the mathematics typeset.
fn latex(entries: &[Entry]) -> String {
    let mut s = String::from(
        "\\documentclass[11pt]{article}\n\\usepackage[margin=2.2cm]{geometry}\n\
         \\usepackage{amsmath,amssymb}\n\\sloppy\n\
         \\title{nabla reproduce: the assignment's exercises}\n\\date{}\n\\begin{document}\n\\maketitle\n\
         \\noindent The questions are restated in \\texttt{ASSIGNMENT.md}; each section is one \
         \\texttt{nabla reproduce --only ID}.\n",
    );
    for e in entries {
        s.push_str(&format!(
            "\\section*{{{} {} ({})}}\n",
            tex_escape(&e.id),
            tex_line(&e.title),
            status(e.ok)
        ));
        s.push_str("\\begin{itemize}\n");
        for d in &e.derivation {
            s.push_str(&format!("\\item {}\n", tex_line(d)));
        }
        s.push_str("\\end{itemize}\n\\paragraph{Result.}\n\\begin{itemize}\n");
        for l in &e.summary {
            s.push_str(&format!("\\item {}\n", tex_line(l)));
        }
        s.push_str("\\end{itemize}\n");
    }
    s.push_str("\\end{document}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_character_the_exercises_print_has_a_latex_form() {
        let entries = crate::exercises::run(None).unwrap();
        for e in &entries {
            let texts = e
                .derivation
                .iter()
                .chain(&e.summary)
                .chain(std::iter::once(&e.title));
            for t in texts {
                for c in t.chars().filter(|c| !c.is_ascii()) {
                    assert!(
                        UNICODE.iter().any(|(u, _)| *u == c),
                        "exercise {}: no LaTeX for {c:?} in {t:?}",
                        e.id
                    );
                }
            }
        }
    }

    #[test]
    fn latex_typesets_the_math() {
        assert_eq!(
            tex_line("h_t = σ(W x_t + U h_{t−1}),  y_t = V h_t."),
            "$h_{t} = \\sigma (W x_{t} + U h_{t-1}),$  $y_{t} = V h_{t}.$"
        );
        assert_eq!(tex_line("from w⁽⁰⁾ = 0 every"), "from $w^{(0)} = 0$ every");
        assert_eq!(
            tex_line("α_ij = softmax_{j ∈ N(i)}(Q h_i)"),
            "$\\alpha _{ij} = \\operatorname{softmax}_{j \\in  N(i)}(Q h_{i})$"
        );
        assert_eq!(
            tex_line("a directed edge j → i"),
            "a directed edge $j \\rightarrow  i$"
        );
        // Digits follow their neighbours; prose stays text.
        assert_eq!(
            tex_line("for t = 1..5: 4.8, 2.3"),
            "for $t = 1..5:$ 4.8, 2.3"
        );
        assert_eq!(tex_line("50% & more"), "50\\% \\& more");
        // A brace left open is closed, so the document always compiles.
        assert_eq!(tex_line("x_{t"), "$x_{t}$");
        assert_eq!(tex_line("a_b_c"), "$a_{b}{}_{c}$");
        assert_eq!(
            tex_line("masked_batch_norm max"),
            "masked\\_batch\\_norm max"
        );
        let doc = latex(&crate::exercises::run(None).unwrap());
        assert!(
            !doc.contains("\\_\\{") && !doc.contains("$-$1\\}"),
            "escaped math left"
        );
        assert!(doc.starts_with("\\documentclass") && doc.ends_with("\\end{document}\n"));
        for line in doc.lines() {
            assert_eq!(line.matches('$').count() % 2, 0, "unbalanced $ in {line}");
        }
    }

    #[test]
    fn latex_escapes_specials_and_unicode() {
        assert_eq!(tex_escape("a_b & 50%"), "a\\_b \\& 50\\%");
        assert_eq!(tex_escape("σ(x)"), "$\\sigma$(x)");
        assert!(tex_escape("‖∇_W L‖²").is_ascii());
    }
}
