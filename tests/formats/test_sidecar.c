/* Sidecar manifests: locating a package, parsing both layouts, the rules of
 * spec §1.3 generalised to the model's geometry, the writer's output read
 * back, and bad manifests refused with the manifest and the entry named. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/ggml_types.h"
#include "formats/sidecar.h"
#include "harness.h"

/* Geometry of the test model: 2 layers, 4 experts, 8 wide, expert width 4;
 * F32 records are gate 4x8, up 4x8, down 8x4 floats = 3 x 128 bytes. */
static const ds4_sidecar_geom G = {2, 4, 8, 4};
#define FAM_BYTES 128u

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void make_file(const char *path, long size) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(ftruncate(fd, size) == 0);
    close(fd);
}

/* An expert-major manifest; `tweak` (when non-NULL) replaces entry k. */
static char *manifest(int stride, int n_layers, int k, const char *tweak) {
    static char buf[16384];
    int n = snprintf(buf, sizeof buf, "{\"schema_version\": 1, \"extra\": [1, {\"x\": null}], \"entries\": [");
    static const char *fam[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
    int idx = 0;
    for (int l = 0; l < n_layers; l++)
        for (int f = 0; f < 3; f++, idx++) {
            n += snprintf(buf + n, sizeof buf - (size_t)n, "%s", idx ? ", " : "");
            if (idx == k && tweak) {
                n += snprintf(buf + n, sizeof buf - (size_t)n, "%s", tweak);
                continue;
            }
            n += snprintf(buf + n, sizeof buf - (size_t)n,
                          "{\"layer\": %d, \"tensor_family\": \"%s\", \"quant_type\": \"F32\", \"shape\": [%d, %d, 4], "
                          "\"repacked_file\": \"layer_%03d.bin\", \"repacked_offset\": %d, \"bytes_per_expert\": 128, "
                          "\"expert_stride\": %d, \"expert_major\": true, \"exact_byte_length\": 512, \"unknown\": \"ok\"}",
                          l, fam[f], f == 2 ? 4 : 8, f == 2 ? 8 : 4, l, f * 128, stride);
        }
    snprintf(buf + n, sizeof buf - (size_t)n, "]}");
    return buf;
}

static ds4_sidecar *open_text(const char *dir, const char *text, ds4_error *err) {
    write_text(test_path("%s/manifest.json", dir), text);
    return ds4_sidecar_open(test_path("%s/manifest.json", dir), &G, err);
}

static void expect_error(const char *dir, const char *text, const char *s1, const char *s2) {
    ds4_error err = {{0}};
    ds4_sidecar *sc = open_text(dir, text, &err);
    CHECKF(sc == NULL, "accepted a bad manifest (wanted '%s')", s1);
    ds4_sidecar_free(sc);
    CHECKF(strstr(err.msg, "manifest.json") != NULL, "message lacks the manifest: %s", err.msg);
    CHECKF(strstr(err.msg, s1) != NULL, "message lacks '%s': %s", s1, err.msg);
    CHECKF(!s2 || strstr(err.msg, s2) != NULL, "message lacks '%s': %s", s2, err.msg);
}

static void test_expert_major(const char *dir) {
    for (int l = 0; l < 2; l++) make_file(test_path("%s/layer_%03d.bin", dir, l), 4 * 4096);
    ds4_error err = {{0}};
    ds4_sidecar *sc = open_text(dir, manifest(4096, 2, -1, NULL), &err);
    CHECKF(sc != NULL, "%s", err.msg);
    if (!sc) return;
    CHECK(!sc->layers[1].family_major);
    CHECK(sc->layers[1].stride == 4096);
    CHECK(sc->layers[1].record_bytes == 3 * FAM_BYTES);
    CHECK(sc->layers[0].fam[DS4_FAM_DOWN].type == GGML_TYPE_F32);
    CHECK(sc->layers[0].fam[DS4_FAM_DOWN].row_bytes == 16);
    CHECK(sc->expert_bytes == 2 * 4 * 3 * FAM_BYTES);
    ds4_sidecar_read rd[3];
    CHECK(ds4_sidecar_expert_reads(sc, 1, 3, rd) == 1);
    CHECK(rd[0].file_off == 3 * 4096 && rd[0].len == 3 * FAM_BYTES && rd[0].mem_off == 0);
    CHECK(strcmp(sc->layers[1].path, test_path("%s/layer_001.bin", dir)) == 0);

    /* The writer's manifest reads back as the same package. */
    ds4_sidecar_file files[1] = {{"layer_000.bin", 4 * 4096, ""}};
    memset(files[0].sha256, 'a', 64);
    files[0].sha256[64] = 0;
    sc->files = files;
    sc->n_files = 1;
    ds4_sidecar_write_info info = {"deepseek4", "/src.gguf", 2, "test"};
    CHECKF(ds4_sidecar_write_manifest(test_path("%s/written.json", dir), sc, &info, &err) == 0, "%s", err.msg);
    sc->files = NULL;
    sc->n_files = 0;
    ds4_sidecar *back = ds4_sidecar_open(test_path("%s/written.json", dir), &G, &err);
    CHECKF(back != NULL, "%s", err.msg);
    if (back) {
        for (uint32_t l = 0; l < 2; l++) {
            CHECK(back->layers[l].stride == sc->layers[l].stride);
            CHECK(!strcmp(back->layers[l].file, sc->layers[l].file));
            for (int f = 0; f < 3; f++) {
                CHECK(back->layers[l].fam[f].offset == sc->layers[l].fam[f].offset);
                CHECK(back->layers[l].fam[f].bytes == sc->layers[l].fam[f].bytes);
                CHECK(back->layers[l].fam[f].type == sc->layers[l].fam[f].type);
                CHECK(!memcmp(back->layers[l].fam[f].shape, sc->layers[l].fam[f].shape, sizeof sc->layers[l].fam[f].shape));
            }
        }
        CHECK(back->n_files == 1 && back->files[0].bytes == 4 * 4096 && back->files[0].sha256[63] == 'a');
    }
    ds4_sidecar_free(back);
    ds4_sidecar_free(sc);

    /* Without expert_stride the records are packed back to back. */
    char *text = strdup(manifest(4096, 2, -1, NULL));
    for (char *p; (p = strstr(text, "\"expert_stride\": 4096, "));) memmove(p, p + 23, strlen(p + 23) + 1);
    sc = open_text(dir, text, &err);
    free(text);
    CHECKF(sc && sc->layers[0].stride == 3 * FAM_BYTES, "%s", sc ? "stride not derived" : err.msg);
    ds4_sidecar_free(sc);

    /* A file one byte short of the last record is truncated. */
    make_file(test_path("%s/layer_001.bin", dir), 3 * 4096 + 3 * FAM_BYTES - 1);
    expect_error(dir, manifest(4096, 2, -1, NULL), "layer_001.bin", "truncated");
    make_file(test_path("%s/layer_001.bin", dir), 3 * 4096 + 3 * FAM_BYTES); /* exactly enough */
    sc = open_text(dir, manifest(4096, 2, -1, NULL), &err);
    CHECKF(sc != NULL, "%s", err.msg);
    ds4_sidecar_free(sc);
}

static void test_family_major(const char *dir) {
    /* Legacy layout: runs of 4 x 128 bytes at 0, 512, 1024; detected from
     * exact_byte_length > bytes_per_expert when expert_major is absent. */
    char buf[8192];
    int n = snprintf(buf, sizeof buf, "{\"entries\": [");
    static const char *fam[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
    for (int l = 0; l < 2; l++)
        for (int f = 0; f < 3; f++)
            n += snprintf(buf + n, sizeof buf - (size_t)n,
                          "%s{\"layer\": %d, \"tensor_family\": \"%s\", \"quant_type\": \"f32\", \"shape\": [%d, %d, 4], "
                          "\"repacked_file\": \"fm_%d.bin\", \"repacked_offset\": %d, \"bytes_per_expert\": 128, "
                          "\"exact_byte_length\": 512}",
                          l || f ? ", " : "", l, fam[f], f == 2 ? 4 : 8, f == 2 ? 8 : 4, l, f * 512);
    snprintf(buf + n, sizeof buf - (size_t)n, "]}");
    for (int l = 0; l < 2; l++) make_file(test_path("%s/fm_%d.bin", dir, l), 3 * 512);
    ds4_error err = {{0}};
    ds4_sidecar *sc = open_text(dir, buf, &err);
    CHECKF(sc != NULL, "%s", err.msg);
    if (sc) {
        CHECK(sc->layers[0].family_major && sc->layers[1].family_major);
        ds4_sidecar_read rd[3];
        CHECK(ds4_sidecar_expert_reads(sc, 0, 2, rd) == 3);
        for (int f = 0; f < 3; f++) {
            CHECK(rd[f].file_off == (uint64_t)f * 512 + 2 * 128);
            CHECK(rd[f].len == 128 && rd[f].mem_off == (uint64_t)f * 128);
        }
    }
    ds4_sidecar_free(sc);
    make_file(test_path("%s/fm_1.bin", dir), 3 * 512 - 1);
    expect_error(dir, buf, "fm_1.bin", "truncated");
}

static void test_rules(const char *dir) {
    for (int l = 0; l < 2; l++) make_file(test_path("%s/layer_%03d.bin", dir, l), 4 * 4096);
    const char *ok_prefix = "{\"layer\": 0, \"tensor_family\": \"ffn_up_exps\", \"quant_type\": \"F32\", ";
    char t[1024];
    expect_error(dir, "[1, 2]", "top level", NULL);
    expect_error(dir, "{\"entries\": 5}", "entries", NULL);
    expect_error(dir, "{\"entries\": [", "not valid JSON", NULL);
    expect_error(dir, manifest(4096, 1, -1, NULL), "3 entries, expected 6", NULL);
    expect_error(dir, manifest(4096, 2, 1, "7"), "entries[1]", "not an object");
    expect_error(dir, manifest(4096, 2, 1, "{\"layer\": 0}"), "entries[1]", "tensor_family");
    snprintf(t, sizeof t, "%s\"shape\": [8, 4, 4], \"repacked_file\": \"layer_000.bin\", \"repacked_offset\": 128}", ok_prefix);
    expect_error(dir, manifest(4096, 2, 1, t), "entries[1] (layer 0 ffn_up_exps)", "bytes_per_expert");
    snprintf(t, sizeof t, "%s\"shape\": [8, 4, 4], \"repacked_file\": \"layer_000.bin\", \"repacked_offset\": -128, "
             "\"bytes_per_expert\": 128}", ok_prefix);
    expect_error(dir, manifest(4096, 2, 1, t), "repacked_offset", "non-negative integer");
    snprintf(t, sizeof t, "%s\"shape\": [8, 4, 4], \"repacked_file\": \"layer_000.bin\", \"repacked_offset\": 128.5, "
             "\"bytes_per_expert\": 128}", ok_prefix);
    expect_error(dir, manifest(4096, 2, 1, t), "repacked_offset", "non-negative integer");
    snprintf(t, sizeof t, "%s\"shape\": [8, 4], \"repacked_file\": \"layer_000.bin\", \"repacked_offset\": 128, "
             "\"bytes_per_expert\": 128}", ok_prefix);
    expect_error(dir, manifest(4096, 2, 1, t), "shape", "3 integers");
    snprintf(t, sizeof t, "%s\"shape\": [8, 4, 5], \"repacked_file\": \"layer_000.bin\", \"repacked_offset\": 128, "
             "\"bytes_per_expert\": 128}", ok_prefix);
    expect_error(dir, manifest(4096, 2, 1, t), "[8, 4, 5]", "[8, 4, 4]");
    snprintf(t, sizeof t, "%s\"shape\": [8, 4, 4], \"repacked_file\": \"/etc/passwd\", \"repacked_offset\": 128, "
             "\"bytes_per_expert\": 128}", ok_prefix);
    expect_error(dir, manifest(4096, 2, 1, t), "repacked_file", "relative");
    snprintf(t, sizeof t, "%s\"shape\": [8, 4, 4], \"repacked_file\": \"layer_001.bin\", \"repacked_offset\": 128, "
             "\"bytes_per_expert\": 128}", ok_prefix);
    expect_error(dir, manifest(4096, 2, 1, t), "layer_001.bin", "differs");
    snprintf(t, sizeof t, "%s\"shape\": [8, 4, 4], \"repacked_file\": \"layer_000.bin\", \"repacked_offset\": 128, "
             "\"bytes_per_expert\": 128, \"expert_major\": false}", ok_prefix);
    expect_error(dir, manifest(4096, 2, 1, t), "layer 0", "mixes");
    snprintf(t, sizeof t, "%s\"shape\": [8, 4, 4], \"repacked_file\": \"layer_000.bin\", \"repacked_offset\": 128, "
             "\"bytes_per_expert\": 128, \"storage_layout\": \"mxfp4_plane_split_v1\"}", ok_prefix);
    expect_error(dir, manifest(4096, 2, 1, t), "storage_layout", "not supported");
    snprintf(t, sizeof t, "{\"layer\": 0, \"tensor_family\": \"ffn_up_exps\", \"quant_type\": \"MXFP4_NATIVE\"}");
    expect_error(dir, manifest(4096, 2, 1, t), "MXFP4_NATIVE", "not supported");
    snprintf(t, sizeof t, "{\"layer\": 2, \"tensor_family\": \"ffn_up_exps\"}");
    expect_error(dir, manifest(4096, 2, 1, t), "layer 2", "outside the model's 2 layers");
    snprintf(t, sizeof t, "{\"layer\": 0, \"tensor_family\": \"ffn_gate_up_exps\"}");
    expect_error(dir, manifest(4096, 2, 1, t), "ffn_gate_up_exps", "not a routed expert family");
    expect_error(dir, "{\"model\": {\"layer_count\": 3}, \"entries\": []}", "layer_count 3", "2 layers");
    char files[20000];
    const char *good = manifest(4096, 2, -1, NULL);
    snprintf(files, sizeof files, "%.*s, \"files\": [{\"path\": \"a\", \"bytes\": 1, \"sha256\": \"xyz\"}]}",
             (int)strlen(good) - 1, good);
    expect_error(dir, files, "files[0]", "64 hex digits");
    snprintf(files, sizeof files, "%.*s, \"files\": [{\"path\": \"../a\", \"bytes\": 1, \"sha256\": \"%064d\"}]}",
             (int)strlen(good) - 1, good, 0);
    expect_error(dir, files, "files[0]", "leaves the package");

    /* A directory without a package is told apart from a plain file. */
    char *m = NULL, *d = NULL;
    ds4_error err = {{0}};
    CHECK(ds4_sidecar_locate(test_path("%s/layer_000.bin", dir), &m, &d, &err) == 0);
    const char *pkg = test_path("%s/pkg", dir);
    mkdir(pkg, 0755);
    CHECK(ds4_sidecar_locate(pkg, &m, &d, &err) == -1);
    CHECKF(strstr(err.msg, "no manifest.json") != NULL, "%s", err.msg);
    mkdir(test_path("%s/sidecar", pkg), 0755);
    write_text(test_path("%s/sidecar/manifest.json", pkg), "{}");
    CHECK(ds4_sidecar_locate(pkg, &m, &d, &err) == -1);
    CHECKF(strstr(err.msg, "dense/model-dense.gguf") != NULL, "%s", err.msg);
    write_text(test_path("%s/model-dense.gguf", pkg), "x");
    CHECK(ds4_sidecar_locate(pkg, &m, &d, &err) == 1);
    CHECK(m && strstr(m, "/sidecar/manifest.json") && d && strstr(d, "/model-dense.gguf"));
    free(m);
    free(d);
    mkdir(test_path("%s/dense", pkg), 0755);
    write_text(test_path("%s/dense/model-dense.gguf", pkg), "x");
    write_text(test_path("%s/manifest.json", pkg), "{}");
    CHECK(ds4_sidecar_locate(pkg, &m, &d, &err) == 1); /* the standard layout wins */
    CHECK(m && !strstr(m, "/sidecar/") && d && strstr(d, "/dense/model-dense.gguf"));
    free(m);
    free(d);
}

int main(void) {
    const char *dir = test_tmp_dir();
    test_expert_major(dir);
    test_family_major(dir);
    test_rules(dir);
    return test_finish();
}
