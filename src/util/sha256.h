/* SHA-256 of byte streams and files (libcrypto's EVP digest), as lowercase
 * hex. Sidecar packages carry one checksum per file so `ds4-sidecar verify`
 * can tell a damaged or half-copied package from a good one. */
#ifndef DS4_UTIL_SHA256_H
#define DS4_UTIL_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "util/error.h"

#define DS4_SHA256_HEX 65 /* 64 hex digits + NUL */

typedef struct ds4_sha256 ds4_sha256;

ds4_sha256 *ds4_sha256_new(void); /* NULL when out of memory */
void ds4_sha256_update(ds4_sha256 *h, const void *data, size_t n);
/* Writes the hex digest and frees h. */
void ds4_sha256_finish(ds4_sha256 *h, char hex[DS4_SHA256_HEX]);
void ds4_sha256_free(ds4_sha256 *h); /* without a digest; safe on NULL */

/* Hashes a whole file; *bytes (when non-NULL) receives its size. */
int ds4_sha256_file(const char *path, char hex[DS4_SHA256_HEX], uint64_t *bytes, ds4_error *err);

#endif
