/* UTF-8 sanitising that works on a stream of byte chunks.
 *
 * Token byte strings can end in the middle of a code point, so text produced
 * token by token must hold back an incomplete sequence until the bytes that
 * finish it arrive. Bytes that can never become valid are replaced by U+FFFD
 * the moment that is certain, one replacement per "maximal subpart" (the
 * Unicode / WHATWG rule, also what Rust's String::from_utf8_lossy does), so
 * feeding a byte string in any number of pieces gives the same text as
 * converting it in one go. */
#ifndef DS4_UTIL_UTF8_H
#define DS4_UTIL_UTF8_H

#include <stddef.h>
#include <stdint.h>

typedef struct ds4_utf8_stream {
    uint8_t pend[4]; /* a valid but incomplete prefix of one sequence */
    uint8_t n_pend;
} ds4_utf8_stream;

/* Room that ds4_utf8_feed may need in `out` for n input bytes. */
#define DS4_UTF8_FEED_MAX(n) (3 * (size_t)(n) + 4)

/* Consumes in[0..n) and writes the text that is now certain to `out`
 * (at least DS4_UTF8_FEED_MAX(n) bytes of room). Returns bytes written. */
size_t ds4_utf8_feed(ds4_utf8_stream *s, const void *in, size_t n, char *out);

/* Ends the stream: an incomplete tail becomes one U+FFFD (at most 3 bytes
 * written). The stream is then empty and may be reused. */
size_t ds4_utf8_finish(ds4_utf8_stream *s, char *out);

/* Length of the sequence starting with lead byte b (1..4), or 0 when b can
 * never start one. */
int ds4_utf8_seq_len(uint8_t b);

/* Decodes one well-formed code point at s[0..n); returns its length and sets
 * *cp, or returns 0 when the bytes there are not a valid sequence. */
int ds4_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);

/* Encodes cp (must be <= 0x10FFFF) into out; returns the length (1..4). */
int ds4_utf8_encode(uint32_t cp, char *out);

#endif
