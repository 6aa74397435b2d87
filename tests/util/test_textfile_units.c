/* Whole files read into memory (lengths with NULs inside, pipes, the size
 * limit, messages naming the path) and sizes as typed on command lines. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../harness.h"
#include "util/textfile.h"
#include "util/units.h"

static void size_ok(const char *s, uint64_t want) {
    uint64_t v = 0;
    CHECKF(ds4_parse_size(s, &v) == 0 && v == want, "'%s' gave %llu, want %llu", s, (unsigned long long)v,
           (unsigned long long)want);
}

static void size_bad(const char *s) {
    uint64_t v = 12345;
    CHECKF(ds4_parse_size(s, &v) == -1 && v == 12345, "'%s' accepted as %llu", s, (unsigned long long)v);
}

int main(void) {
    size_ok("4096", 4096);
    size_ok("12G", 12ull << 30);
    size_ok("512m", 512ull << 20);
    size_ok("1.5GB", 3ull << 29);
    size_ok("64KiB", 64ull << 10);
    size_ok("2T", 2ull << 40);
    const char *bad[] = {"", "0", "-1", "12Q", "G", "12GG", "1KBiB", "1e30G", "nan", "12 G"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) size_bad(bad[i]);

    ds4_error err = {{0}};
    const char *p = test_path("%s/nul.bin", test_tmp_dir());
    FILE *f = fopen(p, "wb");
    CHECK(f && fwrite("ab\0cd", 1, 5, f) == 5);
    if (f) fclose(f);
    size_t len = 0;
    char *t = ds4_read_text_file(p, 100, &len, &err);
    CHECK(t && len == 5 && !memcmp(t, "ab\0cd", 6));
    free(t);
    /* one byte over the limit fails and says so; at the limit it reads */
    CHECK(!ds4_read_text_file(p, 4, NULL, &err) && strstr(err.msg, "nul.bin: larger than 4 bytes"));
    t = ds4_read_text_file(p, 5, NULL, &err);
    CHECK(t != NULL);
    free(t);
    CHECK(!ds4_read_text_file(test_path("%s/none.txt", test_tmp_dir()), 100, NULL, &err) &&
          strstr(err.msg, "none.txt: cannot open"));
    CHECK(!ds4_read_text_file(test_tmp_dir(), 100, NULL, &err) && strstr(err.msg, "cannot read"));
    /* a file whose size stat does not tell */
    t = ds4_read_text_file("/proc/self/maps", 1 << 24, &len, &err);
    CHECK(t && len > 0 && strlen(t) == len && strstr(t, "test_textfile_units"));
    free(t);
    /* many times the first buffer */
    p = test_path("%s/big.txt", test_tmp_dir());
    f = fopen(p, "wb");
    for (int i = 0; f && i < 100000; i++) fputc('a' + i % 26, f);
    if (f) fclose(f);
    t = ds4_read_text_file(p, 1 << 20, &len, &err);
    CHECK(t && len == 100000 && t[99999] == 'a' + 99999 % 26 && t[100000] == 0);
    free(t);
    return test_finish();
}
