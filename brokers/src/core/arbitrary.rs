//! Arbitrary input for the decoders' property tests: every backend's codec is fed
//! random bytes, names and values (known names among them, so the branches that read
//! them run too) and must never panic. `ANYBROKER_FUZZ_CASES` sets how many cases
//! each test runs (default 2,000; e.g. 1,000,000 by hand); `ANYBROKER_FUZZ_SEED`
//! repeats a run, and a failing case prints the seed that makes it.

/// A seeded source of arbitrary values (SplitMix64).
pub(crate) struct Arbitrary(u64);

impl Arbitrary {
    /// Runs `case` on as many arbitrary inputs as the budget says, each from its own
    /// seed, printed when the case panics.
    pub(crate) fn run(mut case: impl FnMut(&mut Arbitrary)) {
        let cases: u64 = std::env::var("ANYBROKER_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000);
        let first: u64 = std::env::var("ANYBROKER_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| super::message_id::random_pair().0);
        for n in 0..cases {
            let seed = first.wrapping_add(n);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                case(&mut Arbitrary(seed))
            }));
            if let Err(panic) = result {
                eprintln!("failing case: ANYBROKER_FUZZ_SEED={seed} ANYBROKER_FUZZ_CASES=1");
                std::panic::resume_unwind(panic);
            }
        }
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True one time in `n`.
    pub(crate) fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// Up to `max` bytes, often short, sometimes made of a few repeated values (the
    /// lengths and markers formats are built of).
    pub(crate) fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = if self.one_in(4) {
            self.below(8)
        } else {
            self.below(max + 1)
        };
        let palette = [0u8, 1, 0xff, b'.', b' ', b'-', b'0', b'9', 0x89, b'{'];
        (0..len)
            .map(|_| {
                if self.one_in(3) {
                    palette[self.below(palette.len())]
                } else {
                    self.next() as u8
                }
            })
            .collect()
    }

    /// Up to `max` characters of arbitrary text (any char, ASCII more often).
    pub(crate) fn text(&mut self, max: usize) -> String {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| match self.below(4) {
                0 => char::from_u32(self.next() as u32 % 0x11_0000).unwrap_or('\u{fffd}'),
                _ => (b' ' + self.below(95) as u8) as char,
            })
            .collect()
    }

    /// One of `known` (names the decoder reads) or arbitrary text.
    pub(crate) fn name(&mut self, known: &[&str]) -> String {
        if !known.is_empty() && self.one_in(2) {
            known[self.below(known.len())].to_string()
        } else {
            self.text(12)
        }
    }

    /// A text value the decoders parse: a number (sometimes huge or negative), a
    /// message id's shape, or arbitrary text.
    pub(crate) fn value(&mut self) -> String {
        match self.below(5) {
            0 => self.next().to_string(),
            1 => format!("-{}", self.next()),
            2 => format!("{}99999999999999999999", self.next()),
            3 => super::new_message_id().to_string(),
            _ => self.text(40),
        }
    }
}
