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

fn latex(entries: &[Entry]) -> String {
    let mut s = String::from(
        "\\documentclass[11pt]{article}\n\\usepackage[T1]{fontenc}\n\\usepackage[margin=2.2cm]{geometry}\n\
         \\title{nabla reproduce: the assignment's exercises}\n\\date{}\n\\begin{document}\n\\maketitle\n",
    );
    for e in entries {
        s.push_str(&format!(
            "\\section*{{{} {} ({})}}\n",
            tex_escape(&e.id),
            tex_escape(&e.title),
            status(e.ok)
        ));
        s.push_str("\\begin{itemize}\n");
        for d in &e.derivation {
            s.push_str(&format!("\\item {}\n", tex_escape(d)));
        }
        s.push_str("\\end{itemize}\n\\paragraph{Result.}\n\\begin{itemize}\n");
        for l in &e.summary {
            s.push_str(&format!("\\item {}\n", tex_escape(l)));
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
    fn latex_escapes_specials_and_unicode() {
        assert_eq!(tex_escape("a_b & 50%"), "a\\_b \\& 50\\%");
        assert_eq!(tex_escape("σ(x)"), "$\\sigma$(x)");
        assert!(tex_escape("‖∇_W L‖²").is_ascii());
    }
}
