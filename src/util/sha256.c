#include "util/sha256.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ds4_sha256 {
    EVP_MD_CTX *ctx;
};

ds4_sha256 *ds4_sha256_new(void) {
    ds4_sha256 *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
        ds4_sha256_free(h);
        return NULL;
    }
    return h;
}

void ds4_sha256_update(ds4_sha256 *h, const void *data, size_t n) {
    if (n) EVP_DigestUpdate(h->ctx, data, n);
}

void ds4_sha256_finish(ds4_sha256 *h, char hex[DS4_SHA256_HEX]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(h->ctx, md, &len);
    static const char digits[] = "0123456789abcdef";
    for (unsigned int i = 0; i < len && i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = 0;
    ds4_sha256_free(h);
}

void ds4_sha256_free(ds4_sha256 *h) {
    if (!h) return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

int ds4_sha256_file(const char *path, char hex[DS4_SHA256_HEX], uint64_t *bytes, ds4_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
    /* Checksumming reads the file once front to back; tell the kernel so it
     * reads ahead aggressively and drops the pages soon after. */
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    ds4_sha256 *h = ds4_sha256_new();
    size_t cap = 4u << 20;
    unsigned char *buf = malloc(cap);
    if (!h || !buf) {
        ds4_sha256_free(h);
        free(buf);
        close(fd);
        return ds4_fail(err, "%s: out of memory hashing", path);
    }
    uint64_t total = 0;
    for (;;) {
        ssize_t got = read(fd, buf, cap);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            int e = errno;
            ds4_sha256_free(h);
            free(buf);
            close(fd);
            return ds4_fail(err, "%s: read error at byte %llu: %s", path, (unsigned long long)total, strerror(e));
        }
        if (got == 0) break;
        ds4_sha256_update(h, buf, (size_t)got);
        total += (uint64_t)got;
    }
    free(buf);
    close(fd);
    ds4_sha256_finish(h, hex);
    if (bytes) *bytes = total;
    return 0;
}
