//! Character-level text: the vocabulary, the train/held-out split, parallel streams for truncated
//! BPTT, and a built-in synthetic corpus (strings of the embedded Reber grammar).

use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::invalid;
use crate::io::excerpt;
use std::path::Path;

/// The most distinct characters a vocabulary may have (2^16): the vocabulary is the class set
/// of a character model's output, checked like a class count before it sizes the model.
pub const MAX_VOCAB: usize = 1 << 16;

/// Reads a text file for a character-level model: UTF-8, an error naming the line and offset
/// of the first invalid byte otherwise.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| NablaError::io(path, e))?;
    text_from_bytes(&bytes, path).map(str::to_owned)
}

/// The bytes of a text file as text (see [`read_text`]); `path` names the file in errors.
pub fn text_from_bytes<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str> {
    super::utf8_text(bytes, path)
}

/// The characters of a text, sorted; a character's index is its token id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
}

impl Vocab {
    /// The distinct characters of `text`.
    pub fn from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Vocab { chars }
    }
    /// From the saved string of characters (checkpoints), which must be sorted and distinct.
    pub fn from_chars(s: &str) -> Result<Self> {
        let chars: Vec<char> = s.chars().collect();
        if chars.is_empty() || chars.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid!(
                "a vocabulary must be non-empty, sorted and without repeats, got {:?}",
                excerpt(s)
            ));
        }
        if chars.len() > MAX_VOCAB {
            return Err(invalid!(
                "a vocabulary of {} characters, more than {MAX_VOCAB} (2^16)",
                chars.len()
            ));
        }
        Ok(Vocab { chars })
    }
    pub fn len(&self) -> usize {
        self.chars.len()
    }
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }
    pub fn as_string(&self) -> String {
        self.chars.iter().collect()
    }
    pub fn char(&self, id: usize) -> char {
        self.chars[id]
    }
    pub fn id(&self, c: char) -> Option<usize> {
        self.chars.binary_search(&c).ok()
    }
    /// Token ids of `text`; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<usize>> {
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                self.id(c).ok_or_else(|| {
                    invalid!(
                        "character {c:?} at position {i} is not in the model's vocabulary of {} characters",
                        self.len()
                    )
                })
            })
            .collect()
    }
    pub fn decode(&self, ids: &[usize]) -> String {
        ids.iter().map(|&i| self.chars[i]).collect()
    }
}

/// A tokenized text cut into a training head, a validation part and a test tail:
/// `train | val | test`, in text order (the test characters are the last `test_frac` of the text,
/// the validation characters the `val_frac` before them).
#[derive(Clone, Debug)]
pub struct CharCorpus {
    pub vocab: Vocab,
    pub train: Vec<usize>,
    /// Selection (best checkpoint) and early stopping.
    pub val: Vec<usize>,
    /// Evaluated once, after training (empty when `test_frac` is 0).
    pub test: Vec<usize>,
}

impl CharCorpus {
    /// Tokenizes `text` and holds out its last `val_frac` for validation (no test part).
    pub fn new(text: &str, val_frac: f64) -> Result<Self> {
        Self::with_test(text, val_frac, 0.0)
    }
    /// Tokenizes `text`, holds out its last `test_frac` for the test and the `val_frac` before
    /// it for validation; every non-empty part needs at least 2 characters (an input and its
    /// next character).
    pub fn with_test(text: &str, val_frac: f64, test_frac: f64) -> Result<Self> {
        let n = text.chars().count();
        if n < 2 {
            return Err(invalid!(
                "the text has {n} character{}; a character-level model needs at least 2 (one input and its next character)",
                if n == 1 { "" } else { "s" }
            ));
        }
        for (flag, f) in [("--val-frac", val_frac), ("--test-frac", test_frac)] {
            if !(0.0..1.0).contains(&f) {
                return Err(invalid!("{flag} must be in [0, 1), got {f}"));
            }
        }
        let vocab = Vocab::from_text(text);
        if vocab.len() > MAX_VOCAB {
            return Err(invalid!(
                "the text has {} distinct characters, more than {MAX_VOCAB} (2^16, the most a character model's vocabulary may have)",
                vocab.len()
            ));
        }
        let ids = vocab.encode(text)?;
        let nv = ((n as f64) * val_frac).round() as usize;
        let nt = ((n as f64) * test_frac).round() as usize;
        let short = |frac: f64, k: usize| frac > 0.0 && k < 2;
        if short(val_frac, nv) || short(test_frac, nt) || n < nv + nt + 2 {
            return Err(invalid!(
                "the text ({n} characters) is too short to hold out {val_frac} (validation) and {test_frac} (test) of it with at least 2 characters in each part"
            ));
        }
        let (head, test) = ids.split_at(n - nt);
        let (train, val) = head.split_at(n - nt - nv);
        Ok(CharCorpus {
            vocab,
            train: train.to_vec(),
            val: val.to_vec(),
            test: test.to_vec(),
        })
    }
}

/// `batch` parallel reading positions over a token sequence treated as circular (after the last
/// token comes the first): row `b` starts at `b·n/batch`. Truncated BPTT reads it `k1` steps at a
/// time, so a text of any length trains with memory independent of its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharStreams {
    pub offsets: Vec<usize>,
}

impl CharStreams {
    pub fn new(n: usize, batch: usize) -> Result<Self> {
        if n < 2 || batch == 0 {
            return Err(invalid!(
                "streams need a text of at least 2 tokens and batch >= 1, got {n} tokens, batch {batch}"
            ));
        }
        Ok(CharStreams {
            offsets: (0..batch).map(|b| b * n / batch).collect(),
        })
    }
    /// Inputs and next-token targets of steps `[from, to)` (counted from the start of training),
    /// `(B·(to − from))` each, batch-major.
    pub fn window(&self, ids: &[usize], from: usize, to: usize) -> (Vec<usize>, Vec<usize>) {
        let n = ids.len();
        let mut x = Vec::with_capacity(self.offsets.len() * (to - from));
        let mut y = Vec::with_capacity(x.capacity());
        for &o in &self.offsets {
            for s in from..to {
                x.push(ids[(o + s) % n]);
                y.push(ids[(o + s + 1) % n]);
            }
        }
        (x, y)
    }
}

/// Strings of the embedded Reber grammar, one per line: `B` then `T` or `P`, a Reber string,
/// the same `T`/`P` again, then `E`. Predicting the second-to-last symbol needs a memory of a
/// symbol many steps back — a small long-dependency task.
pub fn embedded_reber(n_strings: usize, rng: &mut Rng) -> String {
    // Reber automaton: state → [(symbol, next state)]; state 6 emits E and stops.
    const EDGES: [[(char, usize); 2]; 6] = [
        [('T', 1), ('P', 2)],
        [('S', 1), ('X', 3)],
        [('T', 2), ('V', 4)],
        [('X', 2), ('S', 5)],
        [('P', 3), ('V', 5)],
        [('E', 6), ('E', 6)],
    ];
    let mut out = String::new();
    for _ in 0..n_strings {
        let outer = if rng.bernoulli(0.5) { 'T' } else { 'P' };
        out.push('B');
        out.push(outer);
        out.push('B');
        let mut s = 0;
        while s != 6 {
            let (c, next) = EDGES[s][rng.below(2)];
            out.push(c);
            s = next;
        }
        out.push(outer);
        out.push('E');
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_split_streams_and_reber() {
        let c = CharCorpus::new("abcabcabca", 0.2).unwrap();
        assert_eq!(c.vocab.as_string(), "abc");
        assert_eq!((c.train.len(), c.val.len(), c.test.len()), (8, 2, 0));
        // train | val | test in text order, disjoint and covering the text.
        let t = CharCorpus::with_test("abcabcabcabcabcabcab", 0.1, 0.2).unwrap();
        assert_eq!((t.train.len(), t.val.len(), t.test.len()), (14, 2, 4));
        let all: Vec<usize> = [t.train.clone(), t.val.clone(), t.test.clone()].concat();
        assert_eq!(t.vocab.decode(&all), "abcabcabcabcabcabcab");
        assert_eq!(t.vocab.decode(&t.test), "bcab");
        let e = CharCorpus::with_test("abcabc", 0.3, 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short"), "{e}");
        assert!(CharCorpus::with_test("abcabc", 0.1, 1.0).is_err());
        assert!(CharCorpus::new("", 0.1)
            .unwrap_err()
            .to_string()
            .contains("0 characters"));
        assert!(CharCorpus::new("x", 0.1)
            .unwrap_err()
            .to_string()
            .contains("1 character;"));
        let e = c.vocab.encode("abz").unwrap_err().to_string();
        assert!(e.contains("'z'") && e.contains("position 2"), "{e}");
        let s = CharStreams::new(8, 2).unwrap();
        let (x, y) = s.window(&c.train, 2, 5);
        // Row 1 starts at 4 and wraps around the end of the 8 tokens.
        assert_eq!(x, vec![2, 0, 1, 0, 1, 0]);
        assert_eq!(y, vec![0, 1, 2, 1, 0, 1]);
        let r = embedded_reber(50, &mut Rng::new(0));
        for line in r.lines() {
            let b: Vec<char> = line.chars().collect();
            assert_eq!((b[0], b[2], *b.last().unwrap()), ('B', 'B', 'E'));
            assert_eq!(b[1], b[b.len() - 2]);
        }
        assert_eq!(Vocab::from_text(&r).as_string(), "\nBEPSTVX");
    }

    /// A text of more than 2^16 distinct characters is refused (the vocabulary sizes the
    /// model's input and output), invalid UTF-8 is an error naming line and offset, and a
    /// saved vocabulary that is not sorted is quoted in at most 200 bytes.
    #[test]
    fn text_limits_and_errors() {
        let wide: String = (0x100u32..0x100 + 70_000)
            .filter_map(char::from_u32)
            .collect();
        let n = wide.chars().count();
        assert!(n > MAX_VOCAB, "{n}");
        let e = CharCorpus::new(&wide, 0.1).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "the text has {n} distinct characters, more than 65536"
            )),
            "{e}"
        );
        let e = Vocab::from_chars(&wide).unwrap_err().to_string();
        assert!(e.contains("more than 65536"), "{e}");
        let e = text_from_bytes(b"ab\ncd\n\xc3(", Path::new("t.txt"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.txt: line 3: not UTF-8 text: byte 0xc3 at offset 6"),
            "{e}"
        );
        let unsorted = format!("{}a", "b".repeat(1 << 20));
        let e = Vocab::from_chars(&unsorted).unwrap_err().to_string();
        assert!(
            e.contains("(1048577 bytes)") && e.len() < 400,
            "{}",
            e.len()
        );
    }
}
