//! `keyrotctl status`'s drawing of the ring's lifecycle: one bar per key over time
//! (Pending, Active, Retiring; Expired left blank; a revocation marked), a "now" marker and
//! the next transition, 80 columns wide. Colour only when asked (stdout is a terminal).

use chrono::{DateTime, TimeDelta, Utc};
use keyrot_core::{KeyState, KeyStatus, NextTransition, TransitionAction};
use std::fmt::Write as _;

/// The whole drawing's width in columns.
pub const WIDTH: usize = 80;
/// Columns of the kid prefix that names each bar.
const LABEL: usize = 12;
/// Columns of the state name after each bar.
const STATE: usize = 8;
/// Columns of the bars: the rest of the line (two separating spaces).
const BAR: usize = WIDTH - LABEL - STATE - 2;

const PENDING: char = '░';
const ACTIVE: char = '█';
const RETIRING: char = '▒';
const REVOKED: char = '✕';

/// What a key is at one time, as drawn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    None,
    Pending,
    Active,
    Retiring,
    Revoked,
}

impl Cell {
    fn glyph(self) -> char {
        match self {
            Cell::None => ' ',
            Cell::Pending => PENDING,
            Cell::Active => ACTIVE,
            Cell::Retiring => RETIRING,
            Cell::Revoked => REVOKED,
        }
    }

    /// ANSI colour: yellow, green, blue, red.
    fn colour(self) -> Option<&'static str> {
        match self {
            Cell::None => None,
            Cell::Pending => Some("33"),
            Cell::Active => Some("32"),
            Cell::Retiring => Some("34"),
            Cell::Revoked => Some("31"),
        }
    }
}

/// The span of time drawn: from the first key's creation to a little past the latest of
/// now, the next transition and every planned time.
struct Span {
    start: DateTime<Utc>,
    step: TimeDelta,
}

impl Span {
    fn new(keys: &[KeyStatus], now: DateTime<Utc>, next: Option<&NextTransition>) -> Self {
        let start = keys.iter().map(|k| k.created_at).min().unwrap_or(now).min(now);
        let planned = keys
            .iter()
            .flat_map(|k| [k.activate_at, k.expires_at, k.revoked_at])
            .flatten();
        let end = planned.chain(next.map(|n| n.at)).chain([now]).max().unwrap_or(now);
        // A tenth more on the right, so "now" and the last change are not on the edge.
        let total = (end - start).max(TimeDelta::hours(1));
        let total = total + total / 10;
        let cols = i32::try_from(BAR).unwrap_or(i32::MAX);
        Span {
            start,
            step: (total / cols).max(TimeDelta::seconds(1)),
        }
    }

    /// The time at the middle of column `c`.
    fn at(&self, c: usize) -> DateTime<Utc> {
        let c = i32::try_from(c).unwrap_or(i32::MAX);
        self.start + self.step * c + self.step / 2
    }

    /// The column of `t`, if it is drawn.
    fn column(&self, t: DateTime<Utc>) -> Option<usize> {
        let ms = (t - self.start).num_milliseconds();
        let step = self.step.num_milliseconds().max(1);
        usize::try_from(ms / step).ok().filter(|c| *c < BAR)
    }
}

/// What `k` is at `t`, from its stored times and the plan: a Pending key activates at its
/// `activate_at`, and the Active key then retires (`handover`).
fn cell(k: &KeyStatus, t: DateTime<Utc>, handover: Option<DateTime<Utc>>) -> Cell {
    let activated = k.activated_at.or(match k.state {
        KeyState::Pending => k.activate_at,
        _ => None,
    });
    let gone = k.expired_at.or(k.revoked_at).or(k.expires_at);
    if t < k.created_at || gone.is_some_and(|g| t >= g) {
        return Cell::None;
    }
    let retired = k.retired_at.or(match k.state {
        KeyState::Active => handover,
        _ => None,
    });
    if retired.is_some_and(|r| t >= r) {
        return Cell::Retiring;
    }
    if activated.is_some_and(|a| t >= a) && !(k.state == KeyState::Pending && k.revoked_at.is_some()) {
        return Cell::Active;
    }
    Cell::Pending
}

/// One key's bar, with the revocation (if any) marked in its column.
fn bar(k: &KeyStatus, span: &Span, handover: Option<DateTime<Utc>>) -> Vec<Cell> {
    let mut cells: Vec<Cell> = (0..BAR).map(|c| cell(k, span.at(c), handover)).collect();
    if let Some(c) = k.revoked_at.and_then(|t| span.column(t)) {
        cells[c] = Cell::Revoked;
    }
    cells
}

fn paint(out: &mut String, cells: &[Cell], colour: bool) {
    let mut current: Option<&str> = None;
    for &c in cells {
        let want = if colour { c.colour() } else { None };
        if want != current {
            match want {
                Some(code) => {
                    let _ = write!(out, "\x1b[{code}m");
                }
                None => out.push_str("\x1b[0m"),
            }
            current = want;
        }
        out.push(c.glyph());
    }
    if current.is_some() {
        out.push_str("\x1b[0m");
    }
}

fn state_name(k: &KeyStatus) -> &'static str {
    match k.state {
        KeyState::Expired if k.revoked_at.is_some() => "revoked",
        s => s.as_str(),
    }
}

fn action_name(a: TransitionAction) -> &'static str {
    match a {
        TransitionAction::PublishNext => "publish the next key",
        TransitionAction::Activate => "activate",
        TransitionAction::Expire => "expire",
        TransitionAction::Purge => "purge",
        _ => "change",
    }
}

fn minute(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// `kid`'s first [`LABEL`] characters, control characters replaced (a forged kid cannot
/// send escape sequences to the terminal).
fn label(kid: &str) -> String {
    let short: String = kid
        .chars()
        .take(LABEL)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    format!("{short:<LABEL$}")
}

/// The drawing, one line per row, every line at most [`WIDTH`] columns (without colour
/// codes). `colour` adds ANSI colours to the bars.
pub fn render(keys: &[KeyStatus], now: DateTime<Utc>, next: Option<&NextTransition>, colour: bool) -> String {
    let span = Span::new(keys, now, next);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lifecycle {} .. {} UTC, 1 column = {}",
        minute(span.start),
        minute(span.at(BAR - 1)),
        human(span.step)
    );
    let mut markers = vec![' '; BAR];
    let next_col = next.and_then(|n| span.column(n.at));
    if let Some(c) = next_col {
        markers[c] = '▽';
    }
    if let Some(c) = span.column(now) {
        markers[c] = '▼';
    }
    let _ = writeln!(out, "{:LABEL$} {}", "", markers.iter().collect::<String>().trim_end());
    let handover = keys
        .iter()
        .filter(|k| k.state == KeyState::Pending && k.revoked_at.is_none())
        .filter_map(|k| k.activate_at)
        .min();
    for k in keys {
        out.push_str(&label(&k.kid));
        out.push(' ');
        paint(&mut out, &bar(k, &span, handover), colour);
        let _ = writeln!(out, " {}", state_name(k));
    }
    let _ = writeln!(
        out,
        "{PENDING} pending  {ACTIVE} active  {RETIRING} retiring  {REVOKED} revoked  ▼ now {} UTC",
        minute(now)
    );
    if let Some(n) = next {
        let kid = n
            .kid
            .as_deref()
            .map(|k| format!(" {}", label(k).trim_end()))
            .unwrap_or_default();
        let _ = writeln!(out, "▽ next: {}{kid} at {} UTC", action_name(n.action), minute(n.at));
    }
    out
}

/// A duration in its largest whole units (`6h`, `1d 2h`, `45m`).
fn human(d: TimeDelta) -> String {
    let (days, hours, minutes) = (d.num_days(), d.num_hours() % 24, d.num_minutes() % 60);
    let parts: Vec<String> = [(days, "d"), (hours, "h"), (minutes, "m")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if parts.is_empty() {
        format!("{}s", d.num_seconds())
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;
    use keyrot_core::{Algorithm, KeyOrigin};

    fn t(month: u32, day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, month, day, hour, 0, 0)
            .single()
            .expect("time")
    }

    fn key(kid: &str, state: KeyState, created: DateTime<Utc>) -> KeyStatus {
        KeyStatus {
            kid: kid.to_owned(),
            alg: Algorithm::EdDsa,
            state,
            origin: KeyOrigin::Scheduled,
            forced: false,
            fingerprint: kid.to_owned(),
            created_at: created,
            activate_at: None,
            activated_at: None,
            retired_at: None,
            expires_at: None,
            expired_at: None,
            revoked_at: None,
            revoke_reason: None,
            purged_at: None,
            tampered: None,
        }
    }

    /// A ring on 2026-03-10 12:00: a key revoked on 03-01 (the leak), the forced key that
    /// replaced it now Retiring, the Active key, and a Pending one due on 03-11.
    fn ring() -> Vec<KeyStatus> {
        let leaked = KeyStatus {
            activated_at: Some(t(2, 25, 0)),
            revoked_at: Some(t(3, 1, 0)),
            expired_at: Some(t(3, 1, 0)),
            ..key("leakedkey0123456789", KeyState::Expired, t(2, 25, 0))
        };
        let forced = KeyStatus {
            activated_at: Some(t(3, 1, 0)),
            retired_at: Some(t(3, 8, 0)),
            expires_at: Some(t(3, 15, 0)),
            ..key("forcedkey0123456789", KeyState::Retiring, t(3, 1, 0))
        };
        let active = KeyStatus {
            activate_at: Some(t(3, 8, 0)),
            activated_at: Some(t(3, 8, 0)),
            ..key("activekey0123456789", KeyState::Active, t(3, 7, 0))
        };
        let pending = KeyStatus {
            activate_at: Some(t(3, 11, 0)),
            ..key("pendingkey0123456789", KeyState::Pending, t(3, 10, 6))
        };
        vec![leaked, forced, active, pending]
    }

    fn next() -> NextTransition {
        NextTransition {
            action: TransitionAction::Activate,
            kid: Some("pendingkey0123456789".to_owned()),
            at: t(3, 11, 0),
        }
    }

    #[test]
    fn a_known_ring_at_a_fixed_time() {
        let drawn = render(&ring(), t(3, 10, 12), Some(&next()), false);
        let expected = EXPECTED;
        assert_eq!(drawn, expected, "\n{drawn}");
        for line in drawn.lines() {
            assert!(line.chars().count() <= WIDTH, "wider than {WIDTH} columns: {line:?}");
        }
        assert!(!drawn.contains('\x1b'), "no colour when not asked");
    }

    #[test]
    fn colour_only_when_asked_and_same_text_without_it() {
        let coloured = render(&ring(), t(3, 10, 12), Some(&next()), true);
        assert!(coloured.contains("\x1b[32m"), "active in green");
        let stripped: String = {
            let mut out = String::new();
            let mut rest = coloured.as_str();
            while let Some(i) = rest.find('\x1b') {
                out.push_str(&rest[..i]);
                rest = rest[i..].split_once('m').map_or("", |(_, r)| r);
            }
            out.push_str(rest);
            out
        };
        assert_eq!(stripped, render(&ring(), t(3, 10, 12), Some(&next()), false));
    }

    #[test]
    fn a_forged_kid_cannot_reach_the_terminal() {
        let k = key("evil\x1b[2Jkid", KeyState::Active, t(3, 1, 0));
        assert!(!render(&[k], t(3, 2, 0), None, false).contains('\x1b'));
    }

    const EXPECTED: &str = "\
lifecycle 2026-02-25 00:00 .. 2026-03-16 15:06 UTC, 1 column = 8h 11m
                                                    ▼ ▽
leakedkey012 ███████████✕                                               revoked
forcedkey012             ████████████████████▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒      retiring
activekey012                              ░░░█████████▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒ active
pendingkey01                                        ░░█████████████████ pending
░ pending  █ active  ▒ retiring  ✕ revoked  ▼ now 2026-03-10 12:00 UTC
▽ next: activate pendingkey01 at 2026-03-11 00:00 UTC
";
}
