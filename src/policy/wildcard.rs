//! The compact `*`/`?` matcher behind [`CompiledScope`](super::CompiledScope).
//!
//! A key's patterns compile into one byte string (one allocation): each
//! pattern is a LEB128 header (its token count and two flags) followed by
//! its tokens, one byte each; a header of 0 ends the program. Literal bytes
//! are the pattern's UTF-8 bytes, which never include `*` or `?`, so those
//! two are their own tokens and a pattern without `**` compiles to exactly
//! its own text: the program then doubles as the patterns as granted (the
//! *verbatim* flag), and only other patterns are also kept as text, after
//! the end mark. Tokens:
//!
//! - [`STAR`] (`*`): any run of bytes, `/` included;
//! - [`ANY`] (`?`): exactly one byte;
//! - [`DIR_STAR`] (a byte that never occurs in UTF-8): any run of bytes that
//!   is empty or ends with `/`;
//! - any other byte: itself, or when matching ignores case, itself with
//!   ASCII letters folded (`u8::eq_ignore_ascii_case`, no table).
//!
//! The answers are exactly those of the `globset` configuration keyward used
//! before (`case_insensitive(rule)`, `literal_separator(false)`,
//! `backslash_escape(false)`), which `tests/glob_oracle.rs` checks on
//! generated patterns and names:
//!
//! - globset translates to a byte regex (`(?-u)`), so `?` is one *byte* (a
//!   two-byte `é` needs `??`) and case folding is ASCII only (`İ`, `ß` and
//!   the Kelvin sign match only themselves);
//! - `**` is a plain `*` unless it stands between separators (`/`), which a
//!   pattern holds only if the rule's extra characters allow `/`: then
//!   globset's `**/` at the start is `(?:/?|.*/)` ([`DIR_STAR`]), `/**/` in
//!   the middle is `(?:/|/.*/)` (`/` then [`DIR_STAR`]), `/**` at the end is
//!   `/.*`, and a pattern that is only `**` (or `**/`) is `.*`;
//! - with case-sensitive rules globset matches some patterns (`*.`, `**/..`,
//!   a wildcard then a final `.`) through a file name and extension that a
//!   name ending in the component `..` lacks, so they never match such a
//!   name: a flag per pattern keeps that answer.
//!
//! Matching is the greedy two-pointer algorithm that backtracks to the last
//! star only: no allocation, O(n·m) steps in the worst case for a name of n
//! bytes and a pattern of m tokens, linear for patterns with at most one
//! star. With the default rule (ASCII, at most 128 characters, names
//! checked with `ResourceRule::check_name` before matching) n, m ≤ 128:
//! at most 16,384 steps per pattern; other extra characters take up to 4
//! bytes each. Backtracking to the
//! last star only is exact for [`DIR_STAR`] too: a non-empty run of it ends
//! just after a `/` wherever it began, and an empty one either starts the
//! name or follows the `/` the pattern puts before it.

/// `*`: any run of bytes.
const STAR: u8 = b'*';
/// `?`: exactly one byte.
const ANY: u8 = b'?';
/// globset's recursive `**/`: any run of bytes that is empty or ends with `/`.
const DIR_STAR: u8 = 0xFD;

/// globset's tokens for the patterns keyward allows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    Any,
    ZeroOrMore,
    RecursivePrefix,
    RecursiveSuffix,
    RecursiveZeroOrMore,
}

/// Tokenizes `pattern` as globset 0.4's parser does for patterns without
/// classes, alternates or escapes (`parse_star` in `globset/src/glob.rs`).
fn tokens(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out: Vec<Token> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '?' => out.push(Token::Any),
            '*' => {
                let prev = i.checked_sub(1).map(|j| chars[j]);
                if chars.get(i + 1) != Some(&'*') {
                    out.push(Token::ZeroOrMore);
                    i += 1;
                    continue;
                }
                // The second star.
                i += 1;
                let next = chars.get(i + 1).copied();
                if out.is_empty() {
                    if next.is_none_or(|n| n == '/') {
                        out.push(Token::RecursivePrefix);
                        if next.is_some() {
                            i += 1;
                        }
                    } else {
                        out.push(Token::ZeroOrMore);
                        out.push(Token::ZeroOrMore);
                    }
                    i += 1;
                    continue;
                }
                if prev != Some('/') {
                    out.push(Token::ZeroOrMore);
                    out.push(Token::ZeroOrMore);
                    i += 1;
                    continue;
                }
                let is_suffix = match next {
                    None => true,
                    Some('/') => {
                        i += 1;
                        false
                    }
                    Some(_) => {
                        out.push(Token::ZeroOrMore);
                        out.push(Token::ZeroOrMore);
                        i += 1;
                        continue;
                    }
                };
                let token = match out.pop() {
                    Some(Token::RecursivePrefix) => Token::RecursivePrefix,
                    Some(Token::RecursiveSuffix) => Token::RecursiveSuffix,
                    _ if is_suffix => Token::RecursiveSuffix,
                    _ => Token::RecursiveZeroOrMore,
                };
                out.push(token);
            }
            c => out.push(Token::Literal(c)),
        }
        i += 1;
    }
    out
}

/// Whether globset (case-sensitive) would match this pattern through a
/// strategy that looks at the name's last `/`-component and its extension
/// and finds none when that component is `..`: `**/..` (basename literal),
/// `*.` (extension `.`) or a pattern ending in `.` after a wildcard (required
/// extension `.`). Mirrors `MatchStrategy::new` in `globset/src/glob.rs` for
/// `literal_separator(false)`: such a pattern matches no name whose last
/// component is `..`, though its regular expression would.
fn blind_to_dot_dot(tokens: &[Token]) -> bool {
    let literal = |t: &Token| matches!(t, Token::Literal(_));
    let starts_recursive = tokens.first() == Some(&Token::RecursivePrefix);
    // Basename literal: `**/` then literals without `/`.
    if starts_recursive {
        let rest = &tokens[1..];
        if !rest.is_empty() && rest.iter().all(|t| literal(t) && *t != Token::Literal('/')) {
            return rest == [Token::Literal('.'), Token::Literal('.')];
        }
    }
    // Literal.
    if !tokens.is_empty() && tokens.iter().all(literal) {
        return false;
    }
    // Extension: (`**/`)`*.` then literals without `.` or `/`.
    let start = usize::from(starts_recursive);
    if tokens.get(start) == Some(&Token::ZeroOrMore)
        && tokens.get(start + 1) == Some(&Token::Literal('.'))
    {
        let ext = &tokens[start + 2..];
        if ext
            .iter()
            .all(|t| literal(t) && !matches!(t, Token::Literal('.' | '/')))
        {
            return ext.is_empty();
        }
    }
    // Prefix: literals then `*` or `/**`, or all literals.
    let (end, need_sep) = match tokens.last() {
        Some(Token::ZeroOrMore) => (tokens.len() - 1, false),
        Some(Token::RecursiveSuffix) => (tokens.len() - 1, true),
        _ => (tokens.len(), false),
    };
    if tokens[..end].iter().all(literal) && (end > 0 || need_sep) {
        return false;
    }
    // Suffix: (`**/`)(`*`) then literals, not empty and not `/` alone.
    if let Some(first) = tokens.get(start) {
        let lit_start = if *first == Token::ZeroOrMore {
            start + 1
        } else {
            start
        };
        let lits = &tokens[lit_start..];
        let with_sep = starts_recursive && tokens.get(1).is_some_and(literal);
        if lits.iter().all(literal) {
            let len = lits.len() + usize::from(with_sep);
            let only_sep = len == 1 && (with_sep || lits == [Token::Literal('/')]);
            if len > 0 && !only_sep {
                return false;
            }
        }
    }
    // Required extension: literals from the last `.` to the end, no `/`.
    for t in tokens.iter().rev() {
        match t {
            Token::Literal('/') => return false,
            Token::Literal('.') => return tokens.last() == Some(&Token::Literal('.')),
            Token::Literal(_) => {}
            _ => return false,
        }
    }
    false
}

/// Header flag: globset's `..` blind spot applies (see [`blind_to_dot_dot`]).
const BLIND: usize = 1;
/// Header flag: the tokens are the pattern's text.
const VERBATIM: usize = 2;

/// Appends the compiled form of one validated `pattern` (no `,`, `*` and `?`
/// only as wildcards) to `program`, and its text to `texts` unless the
/// compiled form is that text.
pub(super) fn compile_into(
    pattern: &str,
    case_insensitive: bool,
    program: &mut Vec<u8>,
    texts: &mut Vec<u8>,
) {
    let tokens = tokens(pattern);
    let blind = !case_insensitive && blind_to_dot_dot(&tokens);
    let mut code: Vec<u8> = Vec::with_capacity(pattern.len() + 2);
    let push_star = |code: &mut Vec<u8>, star: u8| {
        // `.*.*` is `.*`; a star next to a directory star is the star.
        match code.last() {
            Some(&STAR) => {}
            Some(&DIR_STAR) if star == STAR => {
                code.pop();
                code.push(STAR);
            }
            _ => code.push(star),
        }
    };
    if tokens == [Token::RecursivePrefix] {
        code.push(STAR);
    } else {
        for token in tokens {
            match token {
                Token::Literal(c) => {
                    let mut buf = [0u8; 4];
                    code.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Token::Any => code.push(ANY),
                Token::ZeroOrMore => push_star(&mut code, STAR),
                Token::RecursivePrefix => push_star(&mut code, DIR_STAR),
                Token::RecursiveSuffix => {
                    code.push(b'/');
                    push_star(&mut code, STAR);
                }
                Token::RecursiveZeroOrMore => {
                    code.push(b'/');
                    push_star(&mut code, DIR_STAR);
                }
            }
        }
    }
    let verbatim = code == pattern.as_bytes();
    if !verbatim {
        if !texts.is_empty() {
            texts.push(b',');
        }
        texts.extend_from_slice(pattern.as_bytes());
    }
    // The header: the token count times 4, plus the flags.
    let mut len =
        code.len() * 4 + if blind { BLIND } else { 0 } + if verbatim { VERBATIM } else { 0 };
    loop {
        let byte = (len & 0x7F) as u8;
        len >>= 7;
        if len == 0 {
            program.push(byte);
            break;
        }
        program.push(byte | 0x80);
    }
    program.extend_from_slice(&code);
}

/// Ends a program (a header of 0: no pattern is empty) and appends the
/// texts of its patterns that are not verbatim, joined by `,`.
pub(super) fn end_program(program: &mut Vec<u8>, texts: &[u8]) {
    program.push(0);
    program.extend_from_slice(texts);
}

/// The patterns of a program as granted, in order.
pub(super) fn patterns(data: &[u8]) -> impl Iterator<Item = &str> {
    let mut rest = data;
    let mut verbatim: Vec<Option<&[u8]>> = Vec::new();
    while let Some((code, flags, tail)) = next_pattern(rest) {
        verbatim.push((flags & VERBATIM != 0).then_some(code));
        rest = tail;
    }
    let texts = match rest.split_first() {
        Some((0, tail)) => tail,
        _ => &[],
    };
    let mut others = texts.split(|&b| b == b',');
    verbatim
        .into_iter()
        .filter_map(move |v| std::str::from_utf8(v.or_else(|| others.next())?).ok())
}

/// Whether any pattern of `program` (built by [`compile_into`]) matches
/// `name`; the program ends at its end mark.
#[inline]
pub(super) fn matches_any(program: &[u8], case_insensitive: bool, name: &[u8]) -> bool {
    let mut rest = program;
    while let Some((pattern, flags, tail)) = next_pattern(rest) {
        let hit = if flags & BLIND != 0 && (name == b".." || name.ends_with(b"/..")) {
            false
        } else if case_insensitive {
            matches_one::<true>(pattern, name)
        } else {
            matches_one::<false>(pattern, name)
        };
        if hit {
            return true;
        }
        rest = tail;
    }
    false
}

/// Splits the first pattern (and its flags) off `program`; `None` at the
/// end mark (or if the program were malformed).
#[inline]
fn next_pattern(program: &[u8]) -> Option<(&[u8], usize, &[u8])> {
    // One header byte (patterns of fewer than 32 tokens): the usual case.
    if let Some((&b, body)) = program.split_first() {
        if b & 0x80 == 0 {
            let header = usize::from(b);
            if header == 0 || header / 4 > body.len() {
                return None;
            }
            let (pattern, tail) = body.split_at(header / 4);
            return Some((pattern, header % 4, tail));
        }
    }
    let mut header = 0usize;
    let mut shift = 0u32;
    for (i, &b) in program.iter().enumerate() {
        header |= usize::from(b & 0x7F).checked_shl(shift)?;
        if b & 0x80 == 0 {
            if header == 0 {
                return None;
            }
            let body = program.get(i + 1..)?;
            let len = header / 4;
            if len > body.len() {
                return None;
            }
            let (pattern, tail) = body.split_at(len);
            return Some((pattern, header % 4, tail));
        }
        shift += 7;
    }
    None
}

/// The first position `>= from` (which is past the star's start) where a
/// non-empty run of a star of this kind may end, if any.
#[inline]
fn star_end(name: &[u8], star: u8, from: usize) -> Option<usize> {
    if star == STAR {
        return (from <= name.len()).then_some(from);
    }
    (from..=name.len()).find(|&q| q > 0 && name.get(q - 1) == Some(&b'/'))
}

/// For two different bytes: whether they are the same ASCII letter in
/// two cases (`u8::eq_ignore_ascii_case` once equal bytes are ruled out:
/// they differ in the case bit only, and with that bit set they are a
/// lowercase letter).
#[inline]
fn same_folded(a: u8, b: u8) -> bool {
    a ^ b == 0x20 && (a | 0x20).is_ascii_lowercase()
}

/// Bytes compared at once by [`matches_one`]'s literal fast path.
const WORD: usize = 8;
/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_ne_bytes([1; WORD]);
/// `0x80` in every byte of a word.
const HIGHS: u64 = ONES * 0x80;

/// The eight bytes of `bytes` from `at` as a little-endian word, if there
/// are eight.
#[inline]
fn word_at(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk = bytes.get(at..)?.first_chunk::<WORD>()?;
    Some(u64::from_le_bytes(*chunk))
}

/// Whether a byte of `word` is `byte` (the classic zero-byte test on
/// `word ^ byte…`: exact about whether there is one).
#[inline]
fn has_byte(word: u64, byte: u8) -> bool {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// Whether a byte of `word` is one of the three wildcard tokens.
#[inline]
fn has_wildcard(word: u64) -> bool {
    has_byte(word, STAR) | has_byte(word, ANY) | has_byte(word, DIR_STAR)
}

/// `word` with its ASCII capitals made small, every other byte as it is
/// (`u8::to_ascii_lowercase` on each byte, without a branch): a byte's low
/// seven bits plus a constant set its high bit from `A` up, another from
/// past `Z` (the sums stay within the byte), and bytes with the high bit
/// set (not ASCII) are left out.
#[inline]
fn fold_word(word: u64) -> u64 {
    let low7 = word & !HIGHS;
    let from_a = low7 + ONES * u64::from(0x80 - b'A');
    let past_z = low7 + ONES * u64::from(0x80 - b'Z' - 1);
    let capital = from_a & !past_z & !word & HIGHS;
    word | (capital >> 2)
}

/// Whether two words are the same bytes (`FOLD`: up to ASCII case, as
/// [`same_folded`] says of two bytes).
#[inline]
fn same_word<const FOLD: bool>(a: u64, b: u64) -> bool {
    if FOLD {
        fold_word(a) == fold_word(b)
    } else {
        a == b
    }
}

/// Whether one compiled pattern matches all of `name`.
#[inline]
fn matches_one<const FOLD: bool>(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // After the last star seen: the pattern position after it, where the
    // star's run ends now, and its kind.
    let mut restart: Option<(usize, usize, u8)> = None;
    loop {
        match pattern.get(p) {
            // A star that ends the pattern takes whatever is left (`*`
            // matches any run, `/` included): the answer the steps below
            // would reach a byte at a time (`Prefix*`, the usual pattern).
            Some(&STAR) if p + 1 == pattern.len() => return true,
            Some(&star @ (STAR | DIR_STAR)) => {
                // First try the empty run.
                restart = Some((p + 1, t, star));
                p += 1;
                continue;
            }
            Some(&token) => {
                if let Some(&b) = name.get(t) {
                    if token == b || (FOLD && same_folded(token, b)) || token == ANY {
                        p += 1;
                        t += 1;
                        // Then the next eight literal bytes at once, where
                        // the pattern has no wildcard among them: what
                        // eight steps of this loop would do when all eight
                        // match (on a difference the steps find it). Tried
                        // only after a byte matched, so a pattern that
                        // differs at once pays nothing for it. A pattern's
                        // literal stretches (`Fabrikam.Data.` in
                        // `Fabrikam.Data.*`) were most of a resource
                        // check's time under `perf`, a load and three
                        // branches a byte (issue 14, 2026-12-03).
                        if let (Some(pw), Some(nw)) = (word_at(pattern, p), word_at(name, t)) {
                            if !has_wildcard(pw) && same_word::<FOLD>(pw, nw) {
                                p += WORD;
                                t += WORD;
                            }
                        }
                        continue;
                    }
                }
            }
            None if t == name.len() => return true,
            None => {}
        }
        // Mismatch: let the last star take one more byte (or, for a
        // directory star, run to the next `/`).
        let Some((sp, st, star)) = restart else {
            return false;
        };
        let Some(q) = star_end(name, star, st + 1) else {
            return false;
        };
        restart = Some((sp, q, star));
        p = sp;
        t = q;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, ci: bool, name: &str) -> bool {
        let (mut program, mut texts) = (Vec::new(), Vec::new());
        compile_into(pattern, ci, &mut program, &mut texts);
        end_program(&mut program, &texts);
        assert!(patterns(&program).eq([pattern]));
        matches_any(&program, ci, name.as_bytes())
    }

    #[test]
    fn a_word_folds_as_its_bytes_do() {
        // Every byte value in every position: the branch-free fold agrees
        // with `u8::to_ascii_lowercase`, and no byte spills into the next.
        for b in 0..=255u8 {
            for at in 0..WORD {
                let mut bytes = [b'x'; WORD];
                bytes[at] = b;
                let mut want = bytes;
                want.iter_mut().for_each(|c| *c = c.to_ascii_lowercase());
                let got = fold_word(u64::from_le_bytes(bytes)).to_le_bytes();
                assert_eq!(got, want, "byte {b:#04x} at {at}");
                let wild = [STAR, ANY, DIR_STAR].contains(&b);
                assert_eq!(has_wildcard(u64::from_le_bytes(bytes)), wild, "{b:#04x}");
            }
        }
    }

    #[test]
    fn long_literal_stretches_compare_a_word_at_a_time() {
        // The stretch matched a word at a time, a difference in each of
        // its bytes, case folding (ASCII only), and wildcards inside the
        // first word, which leave it to the byte loop.
        let name = "Fabrikam.Data.Sql.Client";
        assert!(matches("fabrikam.data.*", true, name));
        assert!(matches("FABRIKAM.DATA.SQL.CLIENT", true, name));
        assert!(!matches("FABRIKAM.DATA.SQL.CLIENT", false, name));
        assert!(matches("Fabrikam.Data.Sql.Client", false, name));
        for i in 0..name.len() {
            let mut other = name.as_bytes().to_vec();
            other[i] = if other[i] == b'#' { b'%' } else { b'#' };
            let other = String::from_utf8(other).unwrap();
            assert!(!matches(&other, true, name), "{other}");
            assert!(!matches(&other, false, name), "{other}");
            let mut any = name.as_bytes().to_vec();
            any[i] = b'?';
            let any = String::from_utf8(any).unwrap();
            assert!(matches(&any, true, name), "{any}");
            assert!(matches(&format!("{}*", &name[..i]), false, name));
            assert!(!matches(&format!("{}*x", &name[..i]), false, name));
        }
        // `@` and `[` sit next to the capitals, `` ` `` and `{` next to
        // the small letters: none of them folds.
        assert!(!matches("abcdefgh@", true, "ABCDEFGH`"));
        assert!(!matches("abcdefgh[", true, "ABCDEFGH{"));
        assert!(!matches("@abcdefgh", true, "`abcdefgh"));
        // Non-ASCII bytes whose low seven bits are a capital: themselves.
        assert!(!matches("Ábcdefghij", true, "ábcdefghij"));
        assert!(matches("ÁBCDEFGHIJ", true, "Ábcdefghij"));
    }

    #[test]
    fn stars_and_question_marks() {
        assert!(matches("*", true, ""));
        assert!(matches("*", true, "anything.at/all"));
        assert!(matches("**", true, ""));
        assert!(matches("a**b", true, "a.x.b"));
        assert!(matches("*a", true, "bba"));
        assert!(!matches("*a", true, "ab"));
        assert!(matches("a*", true, "a"));
        assert!(!matches("a*", true, "ba"));
        assert!(matches("?", true, "x"));
        assert!(!matches("?", true, ""));
        assert!(!matches("?", true, "xy"));
        assert!(matches("a*b*c", true, "aXbYbZc"));
        assert!(!matches("a*b*c", true, "aXbYbZ"));
        assert!(matches("*.*.*", true, ".."));
    }

    #[test]
    fn question_mark_is_one_byte_and_folding_is_ascii_only() {
        assert!(!matches("?", true, "é"));
        assert!(matches("??", true, "é"));
        assert!(matches("AZURE", true, "azure"));
        assert!(!matches("AZURE", false, "azure"));
        // İ (U+0130), ß, the Kelvin sign (U+212A): only themselves.
        assert!(!matches("i", true, "İ"));
        assert!(matches("İ", true, "İ"));
        assert!(!matches("ss", true, "ß"));
        assert!(!matches("k", true, "\u{212A}"));
        assert!(!matches("\u{212A}", true, "k"));
    }

    #[test]
    fn recursive_forms_between_separators() {
        assert!(matches("**/a", true, "a"));
        assert!(matches("**/a", true, "/a"));
        assert!(matches("**/a", true, "x/y/a"));
        assert!(!matches("**/a", true, "xa"));
        assert!(matches("a/**", true, "a/"));
        assert!(!matches("a/**", true, "a"));
        assert!(matches("a/**/b", true, "a/b"));
        assert!(matches("a/**/b", true, "a/x/y/b"));
        assert!(!matches("a/**/b", true, "a/xb"));
        assert!(matches("**/", true, "no separator"));
        assert!(matches("**/**", true, ""));
    }

    #[test]
    fn folding_agrees_with_eq_ignore_ascii_case() {
        for a in 0..=u8::MAX {
            for b in 0..=u8::MAX {
                let fast = a == b || same_folded(a, b);
                assert_eq!(fast, a.eq_ignore_ascii_case(&b), "{a} {b}");
            }
        }
    }

    #[test]
    fn long_headers_and_one_byte_headers_agree() {
        // 40 tokens: a two-byte header; 31: one byte.
        let long = "a".repeat(39) + "*";
        let short = "a".repeat(30) + "*";
        assert!(matches(&long, true, &"A".repeat(45)));
        assert!(!matches(&long, true, &"a".repeat(38)));
        assert!(matches(&short, true, &"a".repeat(30)));
        assert!(!matches(&short, true, &"a".repeat(29)));
    }

    #[test]
    fn malformed_programs_match_nothing() {
        assert!(!matches_any(&[0x85], true, b"a"));
        assert!(!matches_any(&[0xFF; 12], true, b"a"));
        assert!(!matches_any(&[12, b'a'], true, b"a"));
        assert_eq!(patterns(&[12, b'a']).count(), 0);
    }

    #[test]
    fn globsets_dot_dot_blind_spot_is_kept() {
        assert!(!matches("*.", false, ".."));
        assert!(!matches("a*.", false, "a/.."));
        assert!(matches("a*.", false, "a.."));
        assert!(matches("*.", true, ".."));
        assert!(matches("*..", false, ".."));
    }
}
