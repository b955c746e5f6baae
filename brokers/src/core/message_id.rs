//! Message ids: unique without coordination, ordered by time, short on the wire, and
//! carrying the publish time so a backend need not send it apart.
//!
//! An id is 22 characters of a 64-symbol alphabet (132 bits), three fields:
//!
//! | symbols | bits | field |
//! |---|---|---|
//! | 9 | 54 | microseconds since the Unix epoch (good until the year 2540) |
//! | 7 | 42 | a random prefix drawn once per thread |
//! | 6 | 36 | that thread's counter, starting at a random value |
//!
//! Two ids collide only if two threads drew the same prefix (a 2^-42 chance per pair)
//! *and* made an id in the same microsecond with the same counter value. Ids sort by
//! their time (then, within one microsecond of one thread, by counter). Against a
//! UUID string an id is 14 characters shorter, and takes no random draw per message.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::unix_micros;

/// How many characters a message id has.
pub const MESSAGE_ID_LEN: usize = 22;

/// 64 symbols in ASCII order, so ids sort as their fields do; all of them are valid in
/// headers, stream fields, AMQP short strings and file names.
const ALPHABET: &[u8; 64] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

const TIME_SYMBOLS: usize = 9;
const PREFIX_BITS: u32 = 42;
const PREFIX_SYMBOLS: usize = PREFIX_BITS as usize / 6;
const COUNTER_BITS: u32 = 36;

/// What a thread puts in its ids: its prefix, written out once, and the counter of its
/// last id.
#[derive(Clone, Copy)]
struct Source {
    prefix: [u8; PREFIX_SYMBOLS],
    counter: u64,
}

thread_local! {
    static SOURCE: Cell<Source> = Cell::new({
        let (prefix, counter) = random_pair();
        let mut text = [0; PREFIX_SYMBOLS];
        render(&mut text, prefix >> (64 - PREFIX_BITS));
        Source { prefix: text, counter: counter >> (64 - COUNTER_BITS) }
    });
}

/// Two random numbers, from the keys std seeds from the operating system's randomness
/// for each thread's `RandomState`, mixed with the time and the process and thread.
pub(crate) fn random_pair() -> (u64, u64) {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    unix_micros(SystemTime::now()).hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    std::thread::current().id().hash(&mut hasher);
    let first = hasher.finish();
    first.hash(&mut hasher);
    (first, hasher.finish())
}

/// A message's id: its text, kept inline when it is no longer than the ids this crate
/// makes ([`MESSAGE_ID_LEN`] bytes), so making one allocates nothing; a longer one (a
/// foreign publisher's UUID, a caller's own) is shared. Reads as a `str`.
#[derive(Clone)]
pub struct MessageId(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, text: [u8; MESSAGE_ID_LEN] },
    Shared(Arc<str>),
}

impl MessageId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: `text[..len]` was copied from a `str` (see `From<&str>`), or is
            // ASCII written by `message_id_at`.
            Repr::Inline { len, text } => unsafe {
                std::str::from_utf8_unchecked(&text[..*len as usize])
            },
            Repr::Shared(text) => text,
        }
    }

    fn inline(text: [u8; MESSAGE_ID_LEN]) -> Self {
        MessageId(Repr::Inline {
            len: MESSAGE_ID_LEN as u8,
            text,
        })
    }
}

impl Default for MessageId {
    /// The empty id.
    fn default() -> Self {
        MessageId(Repr::Inline {
            len: 0,
            text: [0; MESSAGE_ID_LEN],
        })
    }
}

impl std::ops::Deref for MessageId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for MessageId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for MessageId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for MessageId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MessageId {}

impl PartialEq<str> for MessageId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MessageId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for MessageId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MessageId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for MessageId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for MessageId {
    fn from(id: &str) -> Self {
        if id.len() > MESSAGE_ID_LEN {
            return MessageId(Repr::Shared(Arc::from(id)));
        }
        let mut text = [0; MESSAGE_ID_LEN];
        text[..id.len()].copy_from_slice(id.as_bytes());
        MessageId(Repr::Inline {
            len: id.len() as u8,
            text,
        })
    }
}

impl From<&String> for MessageId {
    fn from(id: &String) -> Self {
        MessageId::from(id.as_str())
    }
}

impl From<String> for MessageId {
    fn from(id: String) -> Self {
        if id.len() > MESSAGE_ID_LEN {
            return MessageId(Repr::Shared(Arc::from(id)));
        }
        MessageId::from(id.as_str())
    }
}

impl From<Arc<str>> for MessageId {
    fn from(id: Arc<str>) -> Self {
        if id.len() > MESSAGE_ID_LEN {
            return MessageId(Repr::Shared(id));
        }
        MessageId::from(&*id)
    }
}

impl From<&Arc<str>> for MessageId {
    fn from(id: &Arc<str>) -> Self {
        MessageId::from(id.clone())
    }
}

impl From<MessageId> for Arc<str> {
    fn from(id: MessageId) -> Self {
        match id.0 {
            Repr::Shared(text) => text,
            Repr::Inline { .. } => Arc::from(id.as_str()),
        }
    }
}

impl From<&MessageId> for Arc<str> {
    fn from(id: &MessageId) -> Self {
        Arc::from(id.clone())
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> Self {
        id.as_str().to_string()
    }
}

/// A new unique message id, made now.
pub fn new_message_id() -> MessageId {
    message_id_at(SystemTime::now())
}

/// A new unique message id carrying `time` (to the microsecond).
pub fn message_id_at(time: SystemTime) -> MessageId {
    let source = SOURCE.with(|source| {
        let mut next = source.get();
        next.counter = (next.counter + 1) & ((1 << COUNTER_BITS) - 1);
        source.set(next);
        next
    });
    let mut text = [0u8; MESSAGE_ID_LEN];
    let (time_part, rest) = text.split_at_mut(TIME_SYMBOLS);
    let (prefix_part, counter_part) = rest.split_at_mut(PREFIX_SYMBOLS);
    // Each field in a u64 of its own: a u128 shift costs several instructions a symbol.
    render(time_part, unix_micros(time));
    prefix_part.copy_from_slice(&source.prefix);
    render(counter_part, source.counter);
    // `render` writes only ALPHABET's symbols, which are ASCII, into every byte.
    MessageId::inline(text)
}

/// Every two symbols, indexed by the 12 bits they stand for: a lookup writes two.
const PAIRS: [[u8; 2]; 4096] = {
    let mut pairs = [[0; 2]; 4096];
    let mut bits = 0;
    while bits < 4096 {
        pairs[bits] = [ALPHABET[bits >> 6], ALPHABET[bits & 63]];
        bits += 1;
    }
    pairs
};

/// Writes the low `6 * out.len()` bits of `bits` as symbols, most significant first.
fn render(out: &mut [u8], mut bits: u64) {
    let mut pairs = out.rchunks_exact_mut(2);
    for pair in &mut pairs {
        pair.copy_from_slice(&PAIRS[(bits & 4095) as usize]);
        bits >>= 12;
    }
    if let [first] = pairs.into_remainder() {
        *first = ALPHABET[(bits & 63) as usize];
    }
}

/// The time an id made by [`new_message_id`] or [`message_id_at`] carries; `None` for
/// any string not of their shape. A foreign id of that shape (22 characters of the
/// alphabet) reads as some time too, which nothing here can tell from a real one.
pub fn message_id_time(id: &str) -> Option<SystemTime> {
    id_micros(id).and_then(|micros| UNIX_EPOCH.checked_add(Duration::from_micros(micros)))
}

/// Whether `id` carries exactly `time` (to the microsecond), so a backend may send
/// the id alone.
pub fn message_id_carries(id: &str, time: SystemTime) -> bool {
    message_id_carries_micros(id, unix_micros(time))
}

/// Whether `id` carries exactly `micros` since the Unix epoch: `id_micros(id) ==
/// Some(micros)`, found by writing the time out (five lookups) and comparing, and
/// checking only that the other symbols are of the alphabet, rather than reading all
/// 22 symbols back. Each publish of a network backend asks it.
pub fn message_id_carries_micros(id: &str, micros: u64) -> bool {
    let id = id.as_bytes();
    if id.len() != MESSAGE_ID_LEN || micros >> (6 * TIME_SYMBOLS) != 0 {
        return false;
    }
    let mut time = [0u8; TIME_SYMBOLS];
    render(&mut time, micros);
    let others = id[TIME_SYMBOLS..].iter().fold(0u8, |invalid, &symbol| {
        invalid | SYMBOL_VALUES[symbol as usize]
    });
    id[..TIME_SYMBOLS] == time && others < 64
}

/// The microseconds in an id of the made shape.
fn id_micros(id: &str) -> Option<u64> {
    let id = id.as_bytes();
    if id.len() != MESSAGE_ID_LEN {
        return None;
    }
    let mut micros = 0u64;
    let mut invalid = 0u8;
    for &symbol in &id[..TIME_SYMBOLS] {
        let value = SYMBOL_VALUES[symbol as usize];
        invalid |= value;
        micros = (micros << 6) | u64::from(value & 63);
    }
    for &symbol in &id[TIME_SYMBOLS..] {
        invalid |= SYMBOL_VALUES[symbol as usize];
    }
    // Valid values are below 64 and NOT_A_SYMBOL is not: no branch a symbol.
    (invalid < 64).then_some(micros)
}

/// Each byte's place in the alphabet, `NOT_A_SYMBOL` for bytes outside it: one load
/// a symbol (a `match` over the ranges cost ~15 instructions a symbol, and a backend
/// reads 22 of them per message).
const SYMBOL_VALUES: [u8; 256] = {
    let mut values = [NOT_A_SYMBOL; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        values[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    values
};
const NOT_A_SYMBOL: u8 = u8::MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn fields_are_written_six_bits_a_symbol_most_significant_first() {
        for bits in [0, 1, 63, 64, 4095, 4096, u64::MAX, 0x0123_4567_89AB_CDEF] {
            for len in 1..=10 {
                let mut out = vec![0; len];
                render(&mut out, bits);
                let expected: Vec<u8> = (0..len)
                    .rev()
                    .map(|place| ALPHABET[((bits >> (6 * place)) & 63) as usize])
                    .collect();
                assert_eq!(out, expected, "{bits:#x} in {len} symbols");
            }
        }
    }

    #[test]
    fn the_symbol_table_inverts_the_alphabet() {
        for (value, &symbol) in ALPHABET.iter().enumerate() {
            assert_eq!(
                SYMBOL_VALUES[symbol as usize], value as u8,
                "{}",
                symbol as char
            );
        }
        let outside = (0..=255u8).filter(|b| !ALPHABET.contains(b));
        assert!(outside
            .map(|b| SYMBOL_VALUES[b as usize])
            .all(|v| v == NOT_A_SYMBOL));
    }

    #[test]
    fn ids_have_the_documented_shape_carry_their_time_and_sort_in_making_order() {
        let start = SystemTime::now();
        let ids: Vec<MessageId> = (0..1_000).map(|_| new_message_id()).collect();
        let end = SystemTime::now();
        for id in &ids {
            assert_eq!(id.len(), MESSAGE_ID_LEN, "{id}");
            assert!(id.bytes().all(|b| ALPHABET.contains(&b)), "{id}");
            let t = message_id_time(id).expect("a made id carries its time");
            assert!(
                unix_micros(t) >= unix_micros(start) && unix_micros(t) <= unix_micros(end),
                "{id}: {t:?} outside {start:?}..{end:?}"
            );
        }
        // The wall clock may step back and a counter wraps once in 2^36 ids: allow a
        // couple of inversions, not more.
        let increasing = ids.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(
            increasing >= ids.len() - 3,
            "{increasing} of {}",
            ids.len() - 1
        );
    }

    #[test]
    fn an_id_carries_the_time_it_was_made_at() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456);
        let id = message_id_at(t);
        assert_eq!(message_id_time(&id), Some(t));
        assert!(message_id_carries(&id, t + Duration::from_nanos(999)));
        assert!(!message_id_carries(&id, t + Duration::from_micros(1)));
        let later = message_id_at(t + Duration::from_micros(1));
        assert!(id < later, "{id} < {later}");
    }

    /// The quick check agrees with reading the time back, on made ids, on ids with
    /// one symbol changed anywhere (to another symbol or to a byte outside the
    /// alphabet), on times one microsecond off, and on times too large for the id.
    #[test]
    fn carrying_a_time_is_reading_it_back() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let agree = |id: &str, micros: u64| {
            assert_eq!(
                message_id_carries_micros(id, micros),
                id_micros(id) == Some(micros),
                "{id:?} at {micros}"
            );
        };
        for _ in 0..2_000 {
            let micros = next() >> (64 - 6 * TIME_SYMBOLS as u32);
            let id = message_id_at(UNIX_EPOCH + Duration::from_micros(micros));
            for m in [
                micros,
                micros.wrapping_add(1),
                micros.wrapping_sub(1),
                micros | 1 << 60,
            ] {
                agree(&id, m);
            }
            let mut bytes = id.as_bytes().to_vec();
            let place = (next() % MESSAGE_ID_LEN as u64) as usize;
            bytes[place] = match next() % 3 {
                0 => ALPHABET[(next() % 64) as usize],
                1 => b'.',
                _ => 0x80 | (next() as u8 & 0x7F),
            };
            if let Ok(changed) = std::str::from_utf8(&bytes) {
                agree(changed, micros);
            }
            agree(&id[1..], micros);
        }
        agree("", 0);
    }

    #[test]
    fn other_strings_carry_no_time() {
        assert_eq!(message_id_time(""), None);
        assert_eq!(message_id_time("an id with spaces"), None);
        assert_eq!(
            message_id_time("0123456789abcdef012345X"),
            None,
            "23 characters"
        );
        assert_eq!(message_id_time("0123456789abcdef01234."), None, "a dot");
        assert_eq!(
            message_id_time("67e55044-10b1-426f-9247-bb680e5fe0c8"),
            None
        );
    }

    #[test]
    fn ids_are_unique_across_threads_in_the_same_microseconds() {
        let per_thread = 20_000;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|_| new_message_id())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(seen.insert(id.clone()), "duplicate id {id}");
            }
        }
        assert_eq!(seen.len(), 8 * per_thread);
    }

    #[test]
    fn an_id_reads_the_same_whether_inline_or_shared() {
        let made = new_message_id();
        assert!(matches!(made.0, Repr::Inline { .. }), "a made id is inline");
        assert_eq!(made.len(), MESSAGE_ID_LEN);
        let uuid = "0b4f6f8e-8c1a-4b8e-9a4e-3c2d1e0f9a8b";
        let long = MessageId::from(uuid);
        assert!(matches!(long.0, Repr::Shared(_)), "a longer id is shared");
        assert_eq!(long, uuid);
        assert_eq!(Arc::<str>::from(long.clone()).as_ref(), uuid);
        for text in ["", "a", "exactly-22-characters!", uuid] {
            let (from_str, from_arc) = (MessageId::from(text), MessageId::from(Arc::from(text)));
            assert_eq!(from_str, from_arc);
            assert_eq!(from_str.as_str(), text);
            assert_eq!(format!("{from_str}"), text);
            assert_eq!(format!("{from_str:?}"), format!("{text:?}"));
            // Hashes as its text, so a map of ids is looked up by `&str`.
            let set: HashSet<MessageId> = [from_arc].into_iter().collect();
            assert!(set.contains(text));
        }
        assert_eq!(MessageId::default(), "");
    }
}
